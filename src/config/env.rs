//! `${VAR}` and `${file:/path}` substitution in config string values, and redaction of values
//! quoted in parser errors. Substitution runs on parsed string values, not on the TOML text, so
//! a secret containing quotes or newlines cannot change the file's structure, and a substituted
//! value is never expanded again (a `$` in a secret is just a `$`).

/// Replaces `${VAR}` (an environment variable) and `${file:/path}` (a file's content, one
/// trailing newline dropped: Docker and Kubernetes secrets) in every string value; `$${` stands
/// for a literal `${`. A variable that is not set, or a file that cannot be read, is an error
/// naming the field and the variable or path, never a value.
pub fn substitute(
    table: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) {
    for (key, value) in table.iter_mut() {
        walk(value, key, env, errors);
    }
}

fn walk(
    value: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) {
    match value {
        toml::Value::String(s) if s.contains('$') => match expand(s, env) {
            Ok(v) => *s = v,
            Err(e) => errors.push(format!("{path}: {e}")),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, &format!("{path}[{i}]"), env, errors);
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                walk(v, &format!("{path}.{k}"), env, errors);
            }
        }
        _ => {}
    }
}

fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail.find('}').ok_or("unterminated ${ in value")?;
            let name = &tail[..end];
            if let Some(path) = name.strip_prefix("file:") {
                out.push_str(&read_file(path)?);
                rest = &tail[end + 1..];
                continue;
            }
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(format!("invalid variable name in ${{{name}}}"));
            }
            out.push_str(
                &env(name).ok_or_else(|| format!("environment variable {name} is not set"))?,
            );
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The content of a `${file:…}` secret. Errors name the path and the I/O failure (whose text
/// never holds file content); the content itself is never quoted.
fn read_file(path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("${file:} needs a path".into());
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read file {path}: {e}"))?;
    let mut text = String::from_utf8(bytes).map_err(|_| format!("file {path} is not UTF-8"))?;
    // One line ending, as `echo` and editors leave it; anything more is part of the value.
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// Serde and TOML errors quote the offending value (`invalid type: string "…"`), which may be a
/// secret: keep the message, drop what is quoted.
pub fn redact_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars().peekable();
    let mut prev_word_is_string = false;
    let mut word = String::new();
    while let Some(c) = chars.next() {
        if c == '"' && prev_word_is_string {
            // Skip to the closing quote, honouring backslash escapes.
            let mut escaped = false;
            for d in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if d == '\\' {
                    escaped = true;
                } else if d == '"' {
                    break;
                }
            }
            out.push_str("\"[redacted]\"");
            prev_word_is_string = false;
            continue;
        }
        out.push(c);
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            if !word.is_empty() {
                prev_word_is_string = word == "string" || word == "value";
                word.clear();
            } else if c != ' ' {
                prev_word_is_string = false;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("p\"a$s".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_and_escapes() {
        assert_eq!(expand("a${SECRET}b", &env).unwrap(), "ap\"a$sb");
        assert_eq!(
            expand("$${SECRET} $5 ${EMPTY}", &env).unwrap(),
            "${SECRET} $5 "
        );
        assert_eq!(
            expand("${MISSING}", &env).unwrap_err(),
            "environment variable MISSING is not set"
        );
        assert!(expand("${SECRET", &env).is_err());
        assert!(expand("${A-B}", &env).is_err());
    }

    #[test]
    fn reads_files_without_expanding_or_echoing_them() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, content: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            path.display().to_string()
        };
        // One trailing newline dropped, and a `$` in the content is not expanded again.
        let secret = write("secret", b"hunter$2${SECRET}\n");
        assert_eq!(
            expand(&format!("pre-${{file:{secret}}}-${{EMPTY}}post"), &env).unwrap(),
            "pre-hunter$2${SECRET}-post"
        );
        let crlf = write("crlf", b"a\r\n");
        assert_eq!(expand(&format!("${{file:{crlf}}}"), &env).unwrap(), "a");
        let two = write("two", b"a\n\n");
        assert_eq!(expand(&format!("${{file:{two}}}"), &env).unwrap(), "a\n");

        let missing = dir.path().join("missing").display().to_string();
        let e = expand(&format!("${{file:{missing}}}"), &env).unwrap_err();
        assert!(
            e.starts_with(&format!("cannot read file {missing}: ")),
            "{e}"
        );
        assert!(expand("${file:}", &env).is_err());
        let binary = write("binary", b"top-secret\xff");
        let e = expand(&format!("${{file:{binary}}}"), &env).unwrap_err();
        assert_eq!(e, format!("file {binary} is not UTF-8"));
    }

    #[test]
    fn file_errors_name_the_field_and_path_never_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cr3t-from-file-0123456789\n").unwrap();
        let missing = dir.path().join("missing");
        let text = format!(
            "[decisions]\nsecret = \"${{file:{}}}\"\n[sinks.a]\ntype = \"rabbitmq\"\nurl = \"${{file:{}}}\"\nchannels = \"${{file:{}}}\"\n",
            missing.display(),
            secret.display(),
            secret.display()
        );
        let e = crate::config::load(&text, &env).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "decisions.secret: cannot read file {}",
                missing.display()
            )),
            "{e}"
        );
        // A substituted value the field cannot use is refused without being quoted.
        assert!(
            e.contains(r#"sinks.a: invalid type: string "[redacted]""#),
            "{e}"
        );
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn redacts_quoted_values() {
        let m = r#"invalid type: string "hunter\"2", expected a sequence"#;
        assert_eq!(
            redact_values(m),
            r#"invalid type: string "[redacted]", expected a sequence"#
        );
        let m = "unknown field `secret`, expected one of `header`, `secrets`";
        assert_eq!(redact_values(m), m);
        let m = r#"unknown variant `hmac`, expected one of "a""#;
        assert_eq!(redact_values(m), m);
    }
}
