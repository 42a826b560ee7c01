//! The spool's record format: the envelope's metadata as length-prefixed strings, then the
//! CloudEvent bytes. Versioned so a later format can be told apart: version 2 adds the trace
//! context (`traceparent`, empty when untraced); version 1 records are still read.

use bytes::Bytes;

use crate::normalize::Envelope;

const VERSION: u8 = 2;

pub fn encode(env: &Envelope) -> Vec<u8> {
    let id_origin = env.id_origin().to_string();
    let fields = [
        env.id().as_str(),
        env.source_name(),
        env.event_type(),
        env.ce_source(),
        &id_origin,
        env.traceparent().unwrap_or_default(),
    ];
    let mut out = Vec::with_capacity(
        1 + fields.iter().map(|f| f.len() + 2).sum::<usize>() + env.json().len(),
    );
    out.push(VERSION);
    for f in fields {
        // Every field is bounded far below 64 KiB (IDs ≤ 255, names from config); truncation
        // cannot happen, and decode would refuse it if it did.
        let len = u16::try_from(f.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&f.as_bytes()[..usize::from(len)]);
    }
    out.extend_from_slice(env.json());
    out
}

pub fn decode(mut b: &[u8]) -> Option<Envelope> {
    let (&version, rest) = b.split_first()?;
    let count = match version {
        1 => 5,
        VERSION => 6,
        _ => return None,
    };
    b = rest;
    let mut fields: [&str; 6] = [""; 6];
    for f in &mut fields[..count] {
        let len = usize::from(u16::from_be_bytes(b.get(..2)?.try_into().ok()?));
        *f = std::str::from_utf8(b.get(2..2 + len)?).ok()?;
        b = &b[2 + len..];
    }
    let [id, source, ty, ce_source, origin, traceparent] = fields;
    Some(Envelope::restore_traced(
        id,
        source,
        ty,
        ce_source,
        origin,
        Some(traceparent).filter(|t| !t.is_empty()),
        Bytes::copy_from_slice(b),
    ))
}

/// A dead letter's format: when and why its sink refused it, then the spool record as
/// [`encode`] wrote it. Versioned on its own, so either can change.
const DEAD_VERSION: u8 = 1;
/// Longest reason kept: a broker's text, bounded so one refusal cannot grow the file.
const MAX_REASON: usize = 1024;

pub fn encode_dead(at_ms: u64, reason: &str, record: &[u8]) -> Vec<u8> {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut out = Vec::with_capacity(1 + 8 + 2 + reason.len() + record.len());
    out.push(DEAD_VERSION);
    out.extend_from_slice(&at_ms.to_be_bytes());
    // `end` ≤ MAX_REASON < 64 KiB.
    out.extend_from_slice(&u16::try_from(end).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(reason);
    out.extend_from_slice(record);
    out
}

/// A dead letter: when it was refused (ms since the epoch), why, and the event.
pub struct Dead {
    pub at_ms: u64,
    pub reason: String,
    pub envelope: Envelope,
}

pub fn decode_dead(b: &[u8]) -> Option<Dead> {
    let (&version, rest) = b.split_first()?;
    if version != DEAD_VERSION {
        return None;
    }
    let at_ms = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let len = usize::from(u16::from_be_bytes(rest.get(8..10)?.try_into().ok()?));
    let reason = std::str::from_utf8(rest.get(10..10 + len)?)
        .ok()?
        .to_owned();
    let envelope = decode(rest.get(10 + len..)?)?;
    Some(Dead {
        at_ms,
        reason,
        envelope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(env: &Envelope) -> (String, String, Option<String>, Bytes) {
        (
            env.id().to_string(),
            env.id_origin().to_string(),
            env.traceparent().map(ToOwned::to_owned),
            env.json().clone(),
        )
    }

    #[test]
    fn records_keep_the_trace_context_and_version_1_records_still_read() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let json = Bytes::from_static(b"{\"id\":\"e\"}");
        let traced =
            Envelope::restore_traced("e", "s", "t", "/s", "sha256", Some(tp), json.clone());
        let back = decode(&encode(&traced)).unwrap();
        assert_eq!(fields(&back), fields(&traced));
        assert_eq!(back.traceparent(), Some(tp));

        let plain = Envelope::restore("e", "s", "t", "/s", "/id", json.clone());
        assert_eq!(decode(&encode(&plain)).unwrap().traceparent(), None);

        // What a version without tracing wrote: five fields after the version byte.
        let mut v1 = vec![1u8];
        for f in ["e", "s", "t", "/s", "/id"] {
            v1.extend_from_slice(&u16::try_from(f.len()).unwrap().to_be_bytes());
            v1.extend_from_slice(f.as_bytes());
        }
        v1.extend_from_slice(&json);
        let old = decode(&v1).unwrap();
        assert_eq!(fields(&old), fields(&plain));
        assert_eq!(
            decode(&[3, 0, 0]).map(|e| e.id().to_string()),
            None,
            "unknown version"
        );
    }
}
