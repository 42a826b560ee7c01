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
