//! Bogus signatures an attacker without a key can send at no cost to themselves, each of which
//! costs the verifier a full check: what the abuse tests and the worst-case bench send.

/// A well-formed Ed25519 signature that verifies under no key: R is the base point (compressed:
/// `0x58` then 31 bytes of `0x66`) and s is `i`, so each `i` gives a distinct entry that the
/// verifier must hash and check rather than reject on sight.
#[must_use]
pub fn bogus_ed25519_signature(i: u8) -> [u8; 64] {
    let mut sig = [0u8; 64];
    sig[..32].fill(0x66);
    sig[0] = 0x58;
    sig[63] = i;
    sig
}

/// [`bogus_ed25519_signature`] as a Standard Webhooks `v1a` list entry.
#[must_use]
pub fn bogus_v1a(i: u8) -> String {
    format!("v1a,{}", crate::b64(&bogus_ed25519_signature(i)))
}
