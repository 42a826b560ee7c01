//! The spool's record format: the envelope's metadata as length-prefixed strings, then the
//! CloudEvent bytes. Versioned so a later format can be told apart.

use bytes::Bytes;

use crate::normalize::Envelope;

const VERSION: u8 = 1;

pub fn encode(env: &Envelope) -> Vec<u8> {
    let id_origin = env.id_origin().to_string();
    let fields = [
        env.id().as_str(),
        env.source_name(),
        env.event_type(),
        env.ce_source(),
        &id_origin,
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
    if version != VERSION {
        return None;
    }
    b = rest;
    let mut fields: [&str; 5] = [""; 5];
    for f in &mut fields {
        let len = usize::from(u16::from_be_bytes(b.get(..2)?.try_into().ok()?));
        *f = std::str::from_utf8(b.get(2..2 + len)?).ok()?;
        b = &b[2 + len..];
    }
    let [id, source, ty, ce_source, origin] = fields;
    Some(Envelope::restore(
        id,
        source,
        ty,
        ce_source,
        origin,
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
