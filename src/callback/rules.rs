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
}

/// Compiled rules, in order.
#[derive(Default)]
pub struct RuleSet(Vec<Rule>);

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|r| (&r.name, r.decision)))
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
    pub fn compile(path: &str, rules: Vec<RuleText>) -> Result<Self, Vec<String>> {
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
            out.push(Rule {
                reason: r
                    .reason
                    .unwrap_or_else(|| format!("rule {} matched", r.name)),
                name: r.name,
                program,
                decision: r.decision,
            });
        }
        if errors.is_empty() {
            Ok(Self(out))
        } else {
            Err(errors)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Evaluates the rules in order against a callback.
    pub fn evaluate(&self, source: &str, callback_id: &str, body: &Value) -> Outcome {
        if self.0.is_empty() {
            return Outcome::NoMatch;
        }
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
        for rule in &self.0 {
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
        let set = RuleSet::compile("r", vec![rule("coin", "body.coin == 'BTC'", Verdict::Ok)])
            .expect("valid");
        assert_eq!(set.evaluate("s", "id", &body()), Outcome::NoMatch);
        // A missing field is an evaluation error, not a silent false.
        let set = RuleSet::compile("r", vec![rule("m", "body.missing == 1", Verdict::Ok)])
            .expect("valid");
        assert!(matches!(
            set.evaluate("s", "id", &body()),
            Outcome::Failed { .. }
        ));
        let set = RuleSet::compile("r", vec![rule("n", "body.decimal", Verdict::Ok)]).expect("ok");
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
            ],
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
    }
}
