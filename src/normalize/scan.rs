//! One pass over a JSON body: checks that it parses as a reader would (numbers range-checked,
//! strings decoded, no trailing bytes) and picks out the scalars at the wanted RFC 6901
//! pointers, without building a tree. Everything off the wanted paths is only validated.
//!
//! Duplicate keys resolve as in a `serde_json::Value`: the last one wins, so reaching a path a
//! second time clears what the first visit found below it. A number found at a pointer is
//! returned as written (`9007199254740993`, `1.0000000000000001`, `1e2`), never through an
//! `f64`, which would round IDs above 2^53 or with a fraction onto each other.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The scalar found at each pointer, in the order given, as text (`None`: missing, null, or an
/// object or array). `None` overall when the body is not valid JSON or nests objects and arrays
/// deeper than `max_depth`.
pub fn scan(json: &str, pointers: &[&str], max_depth: usize) -> Option<Vec<Option<String>>> {
    let wants: Vec<Vec<Cow<'_, str>>> = pointers.iter().map(|p| tokens(p)).collect();
    let mut found = vec![None; pointers.len()];
    let mut de = serde_json::Deserializer::from_str(json);
    Node {
        wants: &wants,
        active: (0..wants.len()).collect(),
        depth: 0,
        room: max_depth,
        found: &mut found,
        raw_leaves: true,
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(found)
}

/// A pointer's reference tokens, unescaped (`~1` is `/`, `~0` is `~`).
fn tokens(pointer: &str) -> Vec<Cow<'_, str>> {
    pointer
        .split('/')
        .skip(1)
        .map(|t| {
            if t.contains('~') {
                Cow::Owned(t.replace("~1", "/").replace("~0", "~"))
            } else {
                Cow::Borrowed(t)
            }
        })
        .collect()
}

/// A value on (at least) one wanted path: `active` are the pointers through it, `depth` the
/// tokens consumed to reach it, `room` the nesting still allowed inside it.
struct Node<'w, 'f> {
    wants: &'w [Vec<Cow<'w, str>>],
    active: Vec<usize>,
    depth: usize,
    room: usize,
    found: &'f mut [Option<String>],
    /// Read a value at which a pointer ends as raw text first (so numbers keep their digits);
    /// false while re-reading that text.
    raw_leaves: bool,
}

impl<'w> Node<'w, '_> {
    fn set_scalar(self, text: impl Fn() -> String) {
        for &i in &self.active {
            if self.wants[i].len() == self.depth {
                self.found[i] = Some(text());
            }
        }
    }

    /// The node for a child value that the `active` pointers continue into.
    fn child(&mut self, active: Vec<usize>, room: usize) -> Node<'w, '_> {
        Node {
            wants: self.wants,
            active,
            depth: self.depth + 1,
            room,
            found: &mut *self.found,
            raw_leaves: true,
        }
    }

    /// The pointers that continue into the child selected by `matches(token)`.
    fn next(&self, matches: impl Fn(&str) -> bool) -> Vec<usize> {
        self.active
            .iter()
            .copied()
            .filter(|&i| self.wants[i].get(self.depth).is_some_and(|t| matches(t)))
            .collect()
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        use serde::de::Error as _;
        // This occurrence supersedes any earlier one of the same key (last wins).
        for &i in &self.active {
            self.found[i] = None;
        }
        let ends_here = self.raw_leaves
            && self
                .active
                .iter()
                .any(|&i| self.wants[i].len() == self.depth);
        if !ends_here {
            return d.deserialize_any(self);
        }
        // A wanted value: its text first. Only serde_json deserializers reach here (`scan`).
        let raw = <&'de serde_json::value::RawValue as serde::Deserialize>::deserialize(d)?;
        let text = raw.get();
        if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            // Range-checked as a reader would, kept as written.
            serde_json::from_str::<serde_json::Number>(text).map_err(D::Error::custom)?;
            self.set_scalar(|| text.to_owned());
            return Ok(());
        }
        let mut de = serde_json::Deserializer::from_str(text);
        Node {
            raw_leaves: false,
            ..self
        }
        .deserialize(&mut de)
        .map_err(D::Error::custom)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.set_scalar(|| v.to_string());
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.set_scalar(|| v.to_string());
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.set_scalar(|| v.to_string());
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        // The text a `Value` would give (serde_json formats finite floats; the parser never
        // yields a non-finite one).
        self.set_scalar(|| {
            serde_json::Number::from_f64(v).map_or_else(String::new, |n| n.to_string())
        });
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.set_scalar(|| v.to_owned());
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let room = inner_room::<A::Error>(self.room)?;
        let mut index = 0usize;
        loop {
            let next = self.next(|t| t.parse::<usize>() == Ok(index));
            let more = if next.is_empty() {
                seq.next_element_seed(Validated { room })?.is_some()
            } else {
                seq.next_element_seed(self.child(next, room))?.is_some()
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let room = inner_room::<A::Error>(self.room)?;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let next = self.next(|t| t == key);
            if next.is_empty() {
                map.next_value_seed(Validated { room })?;
            } else {
                map.next_value_seed(self.child(next, room))?;
            }
        }
        Ok(())
    }
}

/// The nesting left inside an object or array that has `room`, or an error when there is none.
fn inner_room<E: serde::de::Error>(room: usize) -> Result<usize, E> {
    room.checked_sub(1)
        .ok_or_else(|| E::custom("nested deeper than allowed"))
}

/// An object key, borrowed from the body unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Any JSON value, parsed the way a reader would and then dropped (skipping with `IgnoredAny`
/// would check neither the bytes inside strings nor number ranges), nested at most `room` deep.
#[derive(Clone, Copy)]
struct Validated {
    room: usize,
}

impl<'de> DeserializeSeed<'de> for Validated {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Validated {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = Validated {
            room: inner_room::<A::Error>(self.room)?,
        };
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = Validated {
            room: inner_room::<A::Error>(self.room)?,
        };
        while map.next_key_seed(inner)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(json: &str, pointer: &str) -> Option<String> {
        scan(json, &[pointer], 64)
            .expect("valid JSON")
            .pop()
            .flatten()
    }

    #[test]
    fn pointers_resolve_in_one_pass() {
        let j = r#"{"a":{"b":[10,{"c":"x"}],"d/e":true,"f~g":1.5,"h":-3},"n":null,"s":"top"}"#;
        assert_eq!(one(j, "/s").as_deref(), Some("top"));
        assert_eq!(one(j, "/a/b/0").as_deref(), Some("10"));
        assert_eq!(one(j, "/a/b/1/c").as_deref(), Some("x"));
        assert_eq!(one(j, "/a/d~1e").as_deref(), Some("true"));
        assert_eq!(one(j, "/a/f~0g").as_deref(), Some("1.5"));
        assert_eq!(one(j, "/a/h").as_deref(), Some("-3"));
        // Missing, out of range, through a scalar, or not a scalar: nothing.
        for p in ["/x", "/a/b/7", "/s/t", "/a", "/n", "/a/b/-1", "/a/b/x"] {
            assert_eq!(one(j, p), None, "{p}");
        }
        // Several pointers at once, sharing a path.
        let all = scan(j, &["/a/b/0", "/s", "/a/b/1/c", "/zz"], 64).unwrap();
        assert_eq!(
            all,
            vec![
                Some("10".into()),
                Some("top".into()),
                Some("x".into()),
                None
            ]
        );
        // The empty pointer is the whole document.
        assert_eq!(one("\"whole\"", "").as_deref(), Some("whole"));
    }

    #[test]
    fn last_duplicate_wins_as_in_a_value() {
        for (j, p) in [
            (r#"{"id":"first","id":"second"}"#, "/id"),
            (r#"{"d":{"id":"first"},"d":{"x":1}}"#, "/d/id"),
            (r#"{"id":"first","id":{"nested":1}}"#, "/id"),
            (r#"{"d":{"id":"a","id":"b"},"d":{"id":"c"}}"#, "/d/id"),
        ] {
            let v: serde_json::Value = serde_json::from_str(j).unwrap();
            let expected = v.pointer(p).and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                _ => None,
            });
            assert_eq!(one(j, p), expected, "{j} {p}");
        }
    }

    #[test]
    fn keys_with_escapes_match_a_value_and_numbers_keep_their_text() {
        let j = r#"{"k\u0065y":"v","big":18446744073709551615,"f":1e2,"neg":-9223372036854775808}"#;
        assert_eq!(one(j, "/key").as_deref(), Some("v"));
        assert_eq!(one(j, "/big").as_deref(), Some("18446744073709551615"));
        assert_eq!(one(j, "/f").as_deref(), Some("1e2"));
        assert_eq!(one(j, "/neg").as_deref(), Some("-9223372036854775808"));
    }

    #[test]
    fn numeric_ids_above_2_pow_53_or_with_fractions_never_collide() {
        // Each pair is one f64 apart from nothing: equal as doubles, different as written.
        for (a, b) in [
            ("9007199254740993", "9007199254740992"),
            ("1.0000000000000001", "1.0"),
            (
                "123456789012345678901234567890",
                "123456789012345678901234567891",
            ),
            ("-0", "0"),
        ] {
            let ia = one(&format!(r#"{{"id":{a}}}"#), "/id");
            let ib = one(&format!(r#"{{"id":{b}}}"#), "/id");
            assert_eq!(ia.as_deref(), Some(a));
            assert_eq!(ib.as_deref(), Some(b));
        }
        // Nested under a wanted path, in arrays, and beside other wanted pointers.
        let j = r#"{"d":{"id":9007199254740993,"n":[1.50]},"t":"x"}"#;
        let all = scan(j, &["/d/id", "/d/n/0", "/t"], 64).unwrap();
        assert_eq!(
            all,
            vec![
                Some("9007199254740993".to_owned()),
                Some("1.50".to_owned()),
                Some("x".to_owned())
            ]
        );
        // Out of range is still invalid JSON for a reader.
        assert!(scan(r#"{"id":1e999}"#, &["/id"], 64).is_none());
    }

    #[test]
    fn invalid_json_is_rejected_whole() {
        for j in [
            r#"{"a":1"#,
            r#"{"a":1} x"#,
            r#"{"a":1e999}"#,
            "",
            r#"{"a":"\ud800"}"#,
        ] {
            assert!(scan(j, &["/a"], 64).is_none(), "{j}");
        }
        assert!(scan(r#" {"a":[1,2,{"b":null}]} "#, &[], 64).is_some());
    }

    #[test]
    fn nesting_is_bounded_and_brackets_in_strings_do_not_count() {
        let three = r#"{"a":"[[[[","b":[{"c":"\"}"}]}"#;
        assert!(scan(three, &["/b/0/c"], 3).is_some());
        assert!(scan(three, &[], 2).is_none());
        assert!(scan(three, &["/b/0/c"], 2).is_none());
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(scan(&deep, &[], 64).is_none());
        assert!(scan(&deep, &[], 65).is_some());
    }
}
