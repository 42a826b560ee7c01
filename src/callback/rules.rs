//! Policy rules in CEL (the Common Expression Language, as used by Kubernetes admission policies
//! and Envoy): each rule is a condition over the callback and a decision; the first rule whose
//! condition is true decides.
//!
//! Variables: `body` (the callback's JSON), `source` (the source name), `callback_id`.
//! Rules are compiled and checked at config load (syntax, known functions and variables). At run
//! time a rule that cannot be evaluated (a missing field, a wrong type, a non-boolean result)
//! fails closed: the callback is denied and the error is logged, because skipping it could let
//! a later, broader rule approve what this one was written to stop.

use std::fmt;

use serde_json::Value;

use super::Verdict;

/// Variables a rule may use.
pub const VARIABLES: &[&str] = &["body", "source", "callback_id"];

/// Functions (beyond operators and macros) the interpreter provides.
const FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "type",
    "dyn",
];

/// Macros that bind an iteration variable: `list.all(x, …)`.
const BINDING_MACROS: &[&str] = &["all", "exists", "exists_one", "map", "filter"];

/// Default most work one rule may do on one callback (see the module docs).
pub const DEFAULT_BUDGET: u64 = 1_000_000;
/// Longest rule text accepted.
const MAX_RULE_LEN: usize = 4096;
/// Deepest macro nesting accepted.
const MAX_NESTING: u32 = 3;

/// Node count and deepest macro (comprehension) nesting of an expression.
fn shape(e: &cel::IdedExpr) -> (u64, u32) {
    use cel::common::ast::{EntryExpr, Expr};
    let fold = |items: &mut dyn Iterator<Item = &cel::IdedExpr>| {
        items.map(shape).fold((1u64, 0u32), |(n, d), (n2, d2)| {
            (n.saturating_add(n2), d.max(d2))
        })
    };
    match &e.expr {
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => (1, 0),
        Expr::Select(s) => {
            let (n, d) = shape(&s.operand);
            (n + 1, d)
        }
        Expr::Call(c) => fold(&mut c.target.iter().map(|t| &**t).chain(&c.args)),
        Expr::List(l) => fold(&mut l.elements.iter()),
        Expr::Map(m) => fold(&mut m.entries.iter().flat_map(|en| match &en.expr {
            EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
            EntryExpr::StructField(f) => vec![&f.value],
        })),
        Expr::Struct(st) => fold(&mut st.entries.iter().flat_map(|en| match &en.expr {
            EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
            EntryExpr::StructField(f) => vec![&f.value],
        })),
        Expr::Comprehension(c) => {
            let (range_n, range_d) = shape(&c.iter_range);
            let (body_n, body_d) =
                fold(&mut [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result].into_iter());
            (range_n.saturating_add(body_n), range_d.max(body_d + 1))
        }
    }
}

/// The size of a JSON body for the cost bound: values, plus string bytes in 32-byte units.
fn body_size(v: &Value) -> u64 {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 1,
        Value::String(s) => 1 + (s.len() as u64) / 32,
        Value::Array(a) => a.iter().map(body_size).fold(1, u64::saturating_add),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| body_size(v).saturating_add((k.len() as u64) / 32))
            .fold(1, u64::saturating_add),
    }
}

/// One rule as written in config.
pub struct RuleText {
    pub name: String,
    pub when: String,
    pub decision: Verdict,
    pub reason: Option<String>,
}

struct Rule {
    name: String,
    program: cel::Program,
    decision: Verdict,
    reason: String,
    /// Node count and macro nesting (see the module docs).
    size: u64,
    nesting: u32,
}

impl Rule {
    /// The bound on this rule's work over a body of `n` (saturating).
    fn cost(&self, n: u64) -> u64 {
        (0..=self.nesting).fold(self.size, |c, _| c.saturating_mul(n))
    }
}

/// Compiled rules, in order, and the most work any one of them may do on a callback.
#[derive(Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    budget: u64,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| (&r.name, r.decision)))
            .finish()
    }
}

/// The result of evaluating the rules.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Matched {
        rule: String,
        decision: Verdict,
        reason: String,
    },
    NoMatch,
    /// A rule could not be evaluated: the caller denies (see the module docs).
    Failed {
        rule: String,
        error: String,
    },
}

impl RuleSet {
    /// Compiles every rule; every problem is reported with its rule's path.
    ///
    /// # Errors
    /// One message per invalid rule.
    pub fn compile(path: &str, rules: Vec<RuleText>, budget: u64) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut out = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, r) in rules.into_iter().enumerate() {
            let at = format!("{path}[{i}]");
            if r.name.trim().is_empty() {
                errors.push(format!("{at}.name: must not be empty"));
            } else if !names.insert(r.name.clone()) {
                errors.push(format!("{at}.name: {:?} is used by another rule", r.name));
            }
            if r.when.len() > MAX_RULE_LEN {
                errors.push(format!("{at}.when: longer than {MAX_RULE_LEN} bytes"));
                continue;
            }
            let program = match cel::Program::compile(&r.when) {
                Ok(p) => p,
                Err(e) => {
                    // The parser's message quotes the rule text, which is config, not a secret.
                    let first = e.to_string();
                    let first = first.lines().next().unwrap_or_default().to_owned();
                    errors.push(format!("{at}.when: not a valid CEL expression: {first}"));
                    continue;
                }
            };
            let refs = program.references();
            let bound = bound_variables(&r.when);
            for v in refs.variables() {
                if !VARIABLES.contains(&v) && !bound.iter().any(|b| b == v) {
                    errors.push(format!(
                        "{at}.when: unknown variable {v:?} (available: {})",
                        VARIABLES.join(", ")
                    ));
                }
            }
            for f in refs.functions() {
                let operator = !f.starts_with(|c: char| c.is_ascii_alphabetic());
                if !operator && !FUNCTIONS.contains(&f) {
                    errors.push(format!(
                        "{at}.when: unknown function {f:?} (available: {})",
                        FUNCTIONS.join(", ")
                    ));
                }
            }
            let (size, nesting) = shape(program.expression());
            if nesting > MAX_NESTING {
                errors.push(format!(
                    "{at}.when: macros (all, exists, map, filter) nested {nesting} deep; at most {MAX_NESTING}"
                ));
            }
            out.push(Rule {
                reason: r
                    .reason
                    .unwrap_or_else(|| format!("rule {} matched", r.name)),
                name: r.name,
                program,
                decision: r.decision,
                size,
                nesting,
            });
        }
        if errors.is_empty() {
            Ok(Self { rules: out, budget })
        } else {
            Err(errors)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Evaluates the rules in order against a callback.
    pub fn evaluate(&self, source: &str, callback_id: &str, body: &Value) -> Outcome {
        if self.rules.is_empty() {
            return Outcome::NoMatch;
        }
        let n = body_size(body).saturating_add(1 + (source.len() + callback_id.len()) as u64 / 32);
        let mut ctx = cel::Context::default();
        let vars = [
            ("body", cel::to_value(body)),
            ("source", cel::to_value(source)),
            ("callback_id", cel::to_value(callback_id)),
        ];
        for (name, value) in vars {
            let added = value
                .map_err(|e| e.to_string())
                .and_then(|v| ctx.add_variable(name, v).map_err(|e| e.to_string()));
            if let Err(error) = added {
                return Outcome::Failed {
                    rule: String::new(),
                    error: format!("variable {name}: {error}"),
                };
            }
        }
        for rule in &self.rules {
            let cost = rule.cost(n);
            if cost > self.budget {
                // Not run at all: fail closed like a rule that cannot be evaluated.
                return Outcome::Failed {
                    rule: rule.name.clone(),
                    error: format!(
                        "over the rule budget on this body (cost bound {cost} > {})",
                        self.budget
                    ),
                };
            }
            match rule.program.execute(&ctx) {
                Ok(cel::Value::Bool(true)) => {
                    return Outcome::Matched {
                        rule: rule.name.clone(),
                        decision: rule.decision,
                        reason: rule.reason.clone(),
                    };
                }
                Ok(cel::Value::Bool(false)) => {}
                Ok(other) => {
                    return Outcome::Failed {
                        rule: rule.name.clone(),
                        error: format!("the condition gave {:?}, not a boolean", other.type_of()),
                    };
                }
                Err(e) => {
                    return Outcome::Failed {
                        rule: rule.name.clone(),
                        error: e.to_string(),
                    };
                }
            }
        }
        Outcome::NoMatch
    }
}

/// Iteration variables bound by macros in `text` (`xs.all(x, …)` binds `x`).
fn bound_variables(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for m in BINDING_MACROS {
        let needle = format!(".{m}(");
        let mut rest = text;
        while let Some(at) = rest.find(&needle) {
            rest = &rest[at + needle.len()..];
            let ident: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                out.push(ident);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, when: &str, decision: Verdict) -> RuleText {
        RuleText {
            name: name.into(),
            when: when.into(),
            decision,
            reason: None,
        }
    }

    fn body() -> Value {
        serde_json::json!({
            "amount": "12345", "coin": "GETH", "decimal": 18,
            "address": "0x9414933Ff7777bb28cA22D15c178596A6e58d957",
            "request_id": "request_id_dbe9541f_1673345211103_1107",
            "tags": ["a", "b"]
        })
    }

    #[test]
    fn first_matching_rule_decides() {
        let set = RuleSet::compile(
            "r",
            vec![
                rule("big", "int(body.amount) > 1000000", Verdict::Deny),
                rule(
                    "allowlisted",
                    "body.address in ['0x9414933Ff7777bb28cA22D15c178596A6e58d957'] && body.coin in ['GETH', 'ETH'] && body.request_id.matches('^request_id_')",
                    Verdict::Ok,
                ),
                rule("all", "true", Verdict::Deny),
            ],
            DEFAULT_BUDGET,
        )
        .expect("valid rules");
        assert_eq!(
            set.evaluate("s", "id", &body()),
            Outcome::Matched {
                rule: "allowlisted".into(),
                decision: Verdict::Ok,
                reason: "rule allowlisted matched".into()
            }
        );
        let mut big = body();
        big["amount"] = "5000000".into();
        assert!(matches!(
            set.evaluate("s", "id", &big),
            Outcome::Matched { decision: Verdict::Deny, rule, .. } if rule == "big"
        ));
    }

    #[test]
    fn no_match_and_failures_are_distinct() {
        let set = RuleSet::compile(
            "r",
            vec![rule("coin", "body.coin == 'BTC'", Verdict::Ok)],
            DEFAULT_BUDGET,
        )
        .expect("valid");
        assert_eq!(set.evaluate("s", "id", &body()), Outcome::NoMatch);
        // A missing field is an evaluation error, not a silent false.
        let set = RuleSet::compile(
            "r",
            vec![rule("m", "body.missing == 1", Verdict::Ok)],
            DEFAULT_BUDGET,
        )
        .expect("valid");
        assert!(matches!(
            set.evaluate("s", "id", &body()),
            Outcome::Failed { .. }
        ));
        let set = RuleSet::compile(
            "r",
            vec![rule("n", "body.decimal", Verdict::Ok)],
            DEFAULT_BUDGET,
        )
        .expect("ok");
        assert!(matches!(
            set.evaluate("s", "id", &body()),
            Outcome::Failed { .. }
        ));
        // has() is how an optional field is tested.
        let set = RuleSet::compile(
            "r",
            vec![rule(
                "h",
                "has(body.missing) || body.tags.exists(t, t == 'b')",
                Verdict::Ok,
            )],
            DEFAULT_BUDGET,
        )
        .expect("valid");
        assert!(matches!(
            set.evaluate("s", "id", &body()),
            Outcome::Matched { .. }
        ));
    }

    #[test]
    fn invalid_rules_are_all_reported() {
        let errors = RuleSet::compile(
            "sources.x.decision.rules",
            vec![
                rule("a", "int(body.amount) <", Verdict::Ok),
                rule("b", "nope.amount > 1", Verdict::Ok),
                rule("c", "body.address.lowerAscii() == 'x'", Verdict::Ok),
                rule("c", "true", Verdict::Ok),
                rule(
                    "d",
                    "body.tags.all(a, body.tags.all(b, body.tags.all(c, body.tags.all(d, true))))",
                    Verdict::Ok,
                ),
                rule(
                    "e",
                    &format!("true || {}", "true || ".repeat(700)),
                    Verdict::Ok,
                ),
            ],
            DEFAULT_BUDGET,
        )
        .expect_err("invalid");
        let all = errors.join("\n");
        assert!(
            all.contains("rules[0].when: not a valid CEL expression"),
            "{all}"
        );
        assert!(
            all.contains("rules[1].when: unknown variable \"nope\""),
            "{all}"
        );
        assert!(
            all.contains("rules[2].when: unknown function \"lowerAscii\""),
            "{all}"
        );
        assert!(
            all.contains("rules[3].name: \"c\" is used by another rule"),
            "{all}"
        );
        assert!(all.contains("rules[4].when: macros"), "{all}");
        assert!(all.contains("rules[5].when: longer than 4096"), "{all}");
    }

    #[test]
    fn a_rule_over_its_budget_is_not_run_and_denies() {
        // Nested macros over a list in the body: the bound grows with the list's size squared.
        let when = "body.items.all(a, body.items.exists(b, a == b))";
        let set = RuleSet::compile("r", vec![rule("pairs", when, Verdict::Ok)], DEFAULT_BUDGET)
            .expect("valid");
        let small = serde_json::json!({ "items": [1, 2, 3] });
        assert!(matches!(
            set.evaluate("s", "id", &small),
            Outcome::Matched {
                decision: Verdict::Ok,
                ..
            }
        ));
        // The same rule is true on a large list too, but over the budget it never runs.
        let large = serde_json::json!({ "items": (0..2000).collect::<Vec<_>>() });
        match set.evaluate("s", "id", &large) {
            Outcome::Failed { rule, error } => {
                assert_eq!(rule, "pairs");
                assert!(error.contains("over the rule budget"), "{error}");
            }
            other => panic!("expected a budget failure, got {other:?}"),
        }
        // A plain comparison stays well inside the budget on the same body.
        let flat = RuleSet::compile(
            "r",
            vec![rule("n", "size(body.items) > 10", Verdict::Deny)],
            DEFAULT_BUDGET,
        )
        .expect("valid");
        assert!(matches!(
            flat.evaluate("s", "id", &large),
            Outcome::Matched {
                decision: Verdict::Deny,
                ..
            }
        ));
    }

    #[test]
    fn shape_counts_nodes_and_macro_nesting() {
        let program = |w: &str| cel::Program::compile(w).expect("valid");
        assert_eq!(shape(program("true").expression()).1, 0);
        assert_eq!(shape(program("body.a.all(x, x > 1)").expression()).1, 1);
        assert_eq!(
            shape(program("body.a.all(x, body.b.exists(y, x == y))").expression()).1,
            2
        );
        let (small, _) = shape(program("body.a == 1").expression());
        let (large, _) = shape(program("body.a == 1 && body.b == 2 && body.c == 3").expression());
        assert!(large > small, "{large} > {small}");
    }
}
