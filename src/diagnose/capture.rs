//! Reads a captured HTTP/1.1 request (what `curl --trace`, `nc -l` or a proxy's request log
//! saved) into headers and the exact body bytes.
//!
//! Line endings may be CRLF (as sent) or LF (as an editor saves them); the body is taken byte
//! for byte after the blank line, by `Content-Length` when present, to the end of the file
//! otherwise. Chunked bodies are refused rather than decoded: providers send `Content-Length`,
//! and a capture tool that kept the chunk framing would make the signature fail for a reason that
//! is not the sender's.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// A parsed capture.
#[derive(Debug)]
pub struct Capture {
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Things about the capture worth knowing (a body cut at `Content-Length`).
    pub notes: Vec<String>,
}

/// Why a capture is not a usable HTTP/1 request; the message says where.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CaptureError(String);

fn malformed(message: impl Into<String>) -> CaptureError {
    CaptureError(message.into())
}

/// Parses a raw HTTP/1.x request.
///
/// # Errors
/// [`CaptureError`] naming the line or the count that is wrong.
pub fn parse(raw: &[u8]) -> Result<Capture, CaptureError> {
    let mut pos = 0;
    let next_line = |pos: &mut usize| -> Option<&[u8]> {
        let rest = &raw[*pos..];
        let nl = rest.iter().position(|&b| b == b'\n')?;
        *pos += nl + 1;
        Some(rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]))
    };
    let first = next_line(&mut pos).ok_or_else(|| {
        malformed(
            "no request line: expected `POST /path HTTP/1.1`, headers, a blank line, the body",
        )
    })?;
    let (method, target) = request_line(first)?;
    let mut headers = HeaderMap::new();
    let mut line_no = 1;
    loop {
        line_no += 1;
        let Some(line) = next_line(&mut pos) else {
            return Err(malformed(format!(
                "no blank line after the headers (line {line_no} is the end of the file): the \
                 body must follow an empty line"
            )));
        };
        if line.is_empty() {
            break;
        }
        let (name, value) = header_line(line, line_no)?;
        headers.append(name, value);
    }
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(malformed(
            "Transfer-Encoding is set: chunked bodies are not decoded. Save the body as the \
             application received it, with its Content-Length",
        ));
    }
    let rest = &raw[pos..];
    let mut notes = Vec::new();
    let body = match content_length(&headers)? {
        Some(len) if rest.len() < len => {
            return Err(malformed(format!(
                "Content-Length is {len} but only {} body bytes follow: a truncated capture",
                rest.len()
            )));
        }
        Some(len) if rest.len() > len => {
            let extra = &rest[len..];
            // An editor's final newline is not part of what was sent.
            if !extra.iter().all(|b| matches!(b, b'\r' | b'\n')) {
                return Err(malformed(format!(
                    "Content-Length is {len} but {} bytes follow the headers: the length or the \
                     body was edited",
                    rest.len()
                )));
            }
            notes.push(format!(
                "{} line-break byte(s) after the body's Content-Length ignored",
                extra.len()
            ));
            &rest[..len]
        }
        Some(_) => rest,
        None => {
            if rest.ends_with(b"\n") {
                notes.push(
                    "no Content-Length: the body is everything after the blank line, including \
                     its final line break (if an editor added it, the signature will not match)"
                        .to_owned(),
                );
            }
            rest
        }
    };
    Ok(Capture {
        method,
        target,
        headers,
        body: Bytes::copy_from_slice(body),
        notes,
    })
}

fn request_line(line: &[u8]) -> Result<(String, String), CaptureError> {
    let text = std::str::from_utf8(line)
        .map_err(|_| malformed("line 1: the request line is not ASCII"))?;
    let mut parts = text.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version), None)
            if !method.is_empty()
                && method.bytes().all(|b| b.is_ascii_alphabetic())
                && !target.is_empty()
                && version.starts_with("HTTP/1.") =>
        {
            Ok((method.to_owned(), target.to_owned()))
        }
        _ => Err(malformed(
            "line 1: expected a request line like `POST /hooks/source HTTP/1.1`",
        )),
    }
}

fn header_line(line: &[u8], line_no: usize) -> Result<(HeaderName, HeaderValue), CaptureError> {
    if line.first().is_some_and(|b| matches!(b, b' ' | b'\t')) {
        return Err(malformed(format!(
            "line {line_no}: a folded header line (obsolete in HTTP/1.1): join it to the line \
             above"
        )));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| malformed(format!("line {line_no}: a header line without `:`")))?;
    let name = HeaderName::from_bytes(&line[..colon])
        .map_err(|_| malformed(format!("line {line_no}: not a valid header name")))?;
    let value = line[colon + 1..].trim_ascii();
    let value = HeaderValue::from_bytes(value)
        .map_err(|_| malformed(format!("line {line_no}: the value of {name} is not valid")))?;
    Ok((name, value))
}

fn content_length(headers: &HeaderMap) -> Result<Option<usize>, CaptureError> {
    let mut found = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        let len = value
            .to_str()
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| malformed("Content-Length is not a decimal number"))?;
        if found.is_some_and(|f| f != len) {
            return Err(malformed("two different Content-Length values"));
        }
        found = Some(len);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn crlf_request_with_content_length() {
        let c =
            parse(b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!((c.method.as_str(), c.target.as_str()), ("POST", "/hooks/a"));
        assert_eq!(&c.body[..], b"hello");
        assert_eq!(c.headers["host"], "x");
        assert!(c.notes.is_empty());
    }

    #[test]
    fn lf_line_endings_are_accepted_and_the_body_kept_byte_for_byte() {
        let c =
            parse(b"POST / HTTP/1.1\nBIZ_TIMESTAMP: 1\nContent-Length: 7\n\na\r\nb\r\n\n").unwrap();
        assert_eq!(&c.body[..], b"a\r\nb\r\n\n");
        assert_eq!(c.headers["biz_timestamp"], "1");
    }

    #[test]
    fn without_content_length_the_body_runs_to_the_end() {
        let c = parse(b"POST / HTTP/1.1\n\n{\"a\":1}\n").unwrap();
        assert_eq!(&c.body[..], b"{\"a\":1}\n");
        assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
    }

    #[test]
    fn missing_blank_line_is_refused() {
        let e = parse(b"POST / HTTP/1.1\nA: b\n").unwrap_err();
        assert!(e.0.contains("no blank line"), "{e}");
    }

    #[test]
    fn content_length_mismatches_are_refused_or_noted() {
        let e = parse(b"POST / HTTP/1.1\nContent-Length: 10\n\nshort").unwrap_err();
        assert!(e.0.contains("only 5 body bytes"), "{e}");
        let e = parse(b"POST / HTTP/1.1\nContent-Length: 2\n\nlonger").unwrap_err();
        assert!(e.0.contains("6 bytes follow"), "{e}");
        let c = parse(b"POST / HTTP/1.1\nContent-Length: 2\n\nok\r\n").unwrap();
        assert_eq!(&c.body[..], b"ok");
        assert_eq!(c.notes.len(), 1);
        let e = parse(b"POST / HTTP/1.1\nContent-Length: 2\nContent-Length: 3\n\nabc").unwrap_err();
        assert!(e.0.contains("two different"), "{e}");
        let e = parse(b"POST / HTTP/1.1\nContent-Length: -1\n\n").unwrap_err();
        assert!(e.0.contains("not a decimal"), "{e}");
    }

    /// Every prefix of a capture, and every single-byte change to it, parses or is refused:
    /// never a panic.
    #[test]
    fn truncated_or_corrupted_captures_never_panic() {
        let raw: &[u8] = b"POST /h HTTP/1.1\r\nBIZ_TIMESTAMP: 1\r\nContent-Length: 4\r\n\r\n{}\r\n";
        for end in 0..=raw.len() {
            drop(parse(&raw[..end]));
        }
        for i in 0..raw.len() {
            for b in [0u8, b'\n', b'\r', b' ', b':', 0xff, b'9'] {
                let mut bytes = raw.to_vec();
                bytes[i] = b;
                drop(parse(&bytes));
            }
        }
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        for (raw, want) in [
            (&b""[..], "no request line"),
            (b"hello\n\n", "line 1"),
            (b"POST / HTTP/2\n\n", "line 1"),
            (b"POST / HTTP/1.1\nA: b\n folded\n\n", "line 3: a folded"),
            (
                b"POST / HTTP/1.1\nno colon\n\n",
                "line 2: a header line without",
            ),
            (
                b"POST / HTTP/1.1\nbad name: x\n\n",
                "line 2: not a valid header name",
            ),
            (
                b"POST / HTTP/1.1\nTransfer-Encoding: chunked\n\n0\r\n\r\n",
                "chunked",
            ),
        ] {
            let e = parse(raw).unwrap_err();
            assert!(e.0.contains(want), "{want}: {e}");
        }
    }
}
