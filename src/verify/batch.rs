//! Ed25519 batch verification across concurrent requests, for Cobo WaaS 2.0 sources with one
//! key. Each request queues its (digest, signature), yields once so that the other requests
//! ready in the same scheduler tick can queue theirs, and then whichever request finds the queue
//! non-empty verifies what is in it with `ed25519_dalek::verify_batch`, [`MAX_BATCH`] at a time,
//! and hands each waiter its answer. No timer and no task of its own: an idle source's batch is its one request,
//! verified alone exactly as before; a busy one's grows with what arrived together.
//!
//! What a batch accepts, against `verify_strict` one at a time (which [`super::cobo`] uses, and
//! every request here falls back to):
//! - A failed batch says only that some signature in it is bad, so each one is then verified
//!   alone, and batching stops for [`COOL_DOWN`]: a stream of forged signatures costs one
//!   failed batch per cool-down, not a batch plus a single check per request.
//! - A passing batch accepts every signature in it. dalek's batch equation is the cofactorless
//!   one with 128-bit coefficients drawn from a transcript of every signature in the batch, so a
//!   signature passes it without passing alone only if it is off by a point that only the
//!   private key's holder could arrange (a small-order or mixed-order `R`): nobody without
//!   Cobo's key gets through a batch who would not get through `verify_strict`.
//! - `verify_strict` also refuses a small-order public key, with which anyone could satisfy a
//!   batch; [`super::CoboWaas2::new`] refuses such a key in config, and a batch never sees one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, VerifyingKey};
use tokio::sync::oneshot;

/// The most signatures verified in one call: past about 32, dalek's per-signature cost barely
/// falls, while the request that runs the batch waits for all of it.
pub(super) const MAX_BATCH: usize = 32;

/// How long batching stays off after a batch failed.
pub(super) const COOL_DOWN: Duration = Duration::from_secs(1);

/// One source's queue of signatures waiting to be verified together.
#[derive(Debug)]
pub(super) struct Ed25519Batch {
    key: VerifyingKey,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    queue: Vec<Job>,
    /// While set and in the future, every signature is verified alone.
    single_until: Option<Instant>,
    stats: Stats,
}

/// Counts of what the batcher did, for the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stats {
    /// Calls to `verify_batch` (batches of two or more).
    pub batches: u64,
    /// Of those, the ones that failed and were verified one by one.
    pub failed: u64,
    /// Signatures verified alone: a lone request, a failed batch's members, the cool-down.
    pub single: u64,
}

#[derive(Debug)]
struct Job {
    digest: [u8; 32],
    signature: Signature,
    answer: oneshot::Sender<bool>,
}

impl Ed25519Batch {
    /// A batcher for `key`, which must not be of small order (see the module docs).
    pub(super) fn new(key: VerifyingKey) -> Self {
        debug_assert!(!key.is_weak(), "config refuses small-order keys");
        Self {
            key,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether `signature` is `key`'s over `digest`, verified in a batch with whatever other
    /// requests are waiting at the same time.
    pub(super) async fn verify(&self, digest: [u8; 32], signature: Signature) -> bool {
        let (answer, answered) = oneshot::channel();
        {
            let mut state = self.lock();
            if state
                .single_until
                .is_some_and(|until| Instant::now() < until)
            {
                state.stats.single += 1;
                drop(state);
                return self.key.verify_strict(&digest, &signature).is_ok();
            }
            state.queue.push(Job {
                digest,
                signature,
                answer,
            });
        }
        // Let the other requests that are ready now reach this point and queue theirs.
        tokio::task::yield_now().await;
        // Whoever finds jobs waiting verifies them, so every queued job is taken by the
        // request that queued it at the latest (a request dropped while yielding leaves its
        // job for the next one, whose answer nobody then reads). Only what is queued now:
        // jobs queued meanwhile (other worker threads) are their own requests' to take, so no
        // request keeps verifying others' signatures for as long as the load lasts.
        let queued = std::mem::take(&mut self.lock().queue);
        let mut queued = queued.into_iter();
        while !queued.as_slice().is_empty() {
            self.run(queued.by_ref().take(MAX_BATCH).collect());
        }
        // Answered by this request's own run above, or by another's that took its job.
        answered.await.unwrap_or(false)
    }

    /// What the batcher has done so far.
    #[cfg(test)]
    pub(super) fn stats(&self) -> Stats {
        self.lock().stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the queue inconsistent (pushes and
        // drains only), so a poisoned lock is used as it is.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn run(&self, jobs: Vec<Job>) {
        if jobs.len() == 1 {
            self.lock().stats.single += 1;
            self.each_alone(jobs);
            return;
        }
        let digests: Vec<&[u8]> = jobs.iter().map(|j| &j.digest[..]).collect();
        let signatures: Vec<Signature> = jobs.iter().map(|j| j.signature).collect();
        let keys = vec![self.key; jobs.len()];
        let passed = ed25519_dalek::verify_batch(&digests, &signatures, &keys).is_ok();
        crate::metrics::signature_batch(passed, jobs.len());
        {
            let mut state = self.lock();
            state.stats.batches += 1;
            if !passed {
                state.stats.failed += 1;
                state.stats.single += jobs.len() as u64;
                state.single_until = Some(Instant::now() + COOL_DOWN);
            }
        }
        if passed {
            for job in jobs {
                // The waiter may be gone (its client hung up); nothing to tell then.
                let _waiter_gone = job.answer.send(true);
            }
        } else {
            tracing::warn!(
                signatures = jobs.len(),
                cool_down_s = COOL_DOWN.as_secs(),
                "an Ed25519 batch failed: verifying its signatures one by one, and no batching during the cool-down"
            );
            self.each_alone(jobs);
        }
    }

    fn each_alone(&self, jobs: Vec<Job>) {
        for job in jobs {
            let ok = self.key.verify_strict(&job.digest, &job.signature).is_ok();
            let _waiter_gone = job.answer.send(ok);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The batcher against `verify_strict`, signature by signature: the official-format Cobo
    //! vectors and generated valid and invalid signatures, in batches that pass and that fail.

    use ed25519_dalek::{Signer, SigningKey};
    use futures_util::future::join_all;
    use sha2::{Digest, Sha256};

    use super::*;

    use super::super::tests::vectors;

    fn bytes<const N: usize>(hex_str: &str) -> [u8; N] {
        <[u8; N]>::try_from(hex::decode(hex_str).unwrap()).unwrap()
    }

    /// The Cobo vectors' signing key (cobo-cli's self-test key).
    fn cobo_test_key() -> SigningKey {
        SigningKey::from_bytes(&bytes(hookbridge_testkit::keys::COBO_TEST_SEED_HEX))
    }

    /// A deterministic stream of test bytes: SHA-256 of a label and a counter.
    fn pseudo(label: &str, i: u64) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(label.as_bytes());
        h.update(i.to_le_bytes());
        h.finalize().into()
    }

    /// Every job verified at once through `batch` (all queued before any is taken, as when
    /// they arrive in one scheduler tick), answers in order.
    async fn together(batch: &Ed25519Batch, jobs: &[([u8; 32], Signature)]) -> Vec<bool> {
        join_all(jobs.iter().map(|(d, s)| batch.verify(*d, *s))).await
    }

    /// `n` valid signatures by `key` over digests drawn from `label`.
    fn signed(key: &SigningKey, label: &str, n: u64) -> Vec<([u8; 32], Signature)> {
        (0..n)
            .map(|i| {
                let d = pseudo(label, i);
                (d, key.sign(&d))
            })
            .collect()
    }

    fn strict(key: &VerifyingKey, jobs: &[([u8; 32], Signature)]) -> Vec<bool> {
        jobs.iter()
            .map(|(d, s)| key.verify_strict(d, s).is_ok())
            .collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_cobo_vectors_pass_in_a_batch_and_one_changed_byte_fails_only_its_own() {
        let key = cobo_test_key();
        let all = vectors();
        let mut jobs: Vec<([u8; 32], Signature)> = all["cobo_v2_ed25519"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let digest = bytes(v["message_sha256d_hex"].as_str().unwrap());
                let sig = Signature::from_bytes(&bytes(v["signature_hex"].as_str().unwrap()));
                (digest, sig)
            })
            .collect();
        assert_eq!(
            hex::encode(key.verifying_key().as_bytes()),
            all["cobo_v2_ed25519"][0]["pubkey_hex"].as_str().unwrap()
        );
        jobs.extend(signed(&key, "valid", 6));

        let batch = Ed25519Batch::new(key.verifying_key());
        assert_eq!(together(&batch, &jobs).await, vec![true; jobs.len()]);
        let s = batch.stats();
        assert_eq!((s.batches, s.failed, s.single), (1, 0, 0), "{s:?}");

        // The first vector's digest, one bit off: that request alone is refused.
        jobs[0].0[31] ^= 1;
        let batch = Ed25519Batch::new(key.verifying_key());
        let answers = together(&batch, &jobs).await;
        assert_eq!(answers, strict(&key.verifying_key(), &jobs));
        assert_eq!(answers.iter().filter(|ok| !**ok).count(), 1);
        assert!(!answers[0]);
        let s = batch.stats();
        assert_eq!((s.batches, s.failed, s.single), (1, 1, 8), "{s:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn generated_valid_and_invalid_signatures_get_the_strict_answer() {
        let key = cobo_test_key();
        let other = SigningKey::from_bytes(&pseudo("another key", 0));
        let (mut passed, mut failed) = (0, 0);
        for group in 0..40u64 {
            let jobs: Vec<([u8; 32], Signature)> = (0..8u64)
                .map(|i| {
                    let n = group * 8 + i;
                    let digest = pseudo("digest", n);
                    let mut sig = key.sign(&digest).to_bytes();
                    // One group in two is all valid; in the others, about one signature in
                    // three is wrong in one of four ways.
                    let fault = if group % 2 == 0 {
                        0
                    } else {
                        pseudo("fault", n)[0] % 12
                    };
                    match fault {
                        1 => sig[usize::from(pseudo("at", n)[0] % 32)] ^= 0x10, // R
                        2 => sig[32 + usize::from(pseudo("at", n)[0] % 31)] ^= 0x10, // s
                        3 => sig = other.sign(&digest).to_bytes(),
                        4 => sig[63] |= 0xe0, // s far above the group order
                        _ => {}
                    }
                    let digest = if fault == 5 {
                        pseudo("another digest", n)
                    } else {
                        digest
                    };
                    (digest, Signature::from_bytes(&sig))
                })
                .collect();
            let batch = Ed25519Batch::new(key.verifying_key());
            let answers = together(&batch, &jobs).await;
            assert_eq!(
                answers,
                strict(&key.verifying_key(), &jobs),
                "group {group}"
            );
            let s = batch.stats();
            assert_eq!(s.batches, 1, "group {group}: {s:?}");
            if answers.iter().all(|ok| *ok) {
                passed += 1;
            } else {
                failed += 1;
                assert_eq!((s.failed, s.single), (1, 8), "group {group}: {s:?}");
            }
        }
        // Both kinds of batch were exercised.
        assert!(
            passed >= 20 && failed >= 10,
            "{passed} passed, {failed} failed"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn after_a_failed_batch_signatures_are_verified_alone_for_the_cool_down() {
        let key = cobo_test_key();
        let valid = signed(&key, "cool", 8);
        let mut forged = valid.clone();
        forged[3].0[0] ^= 1;

        let batch = Ed25519Batch::new(key.verifying_key());
        together(&batch, &forged).await;
        assert_eq!(batch.stats().failed, 1);
        // Within the cool-down: no batch, every signature alone, the same answers.
        assert_eq!(together(&batch, &valid).await, vec![true; 8]);
        let s = batch.stats();
        assert_eq!((s.batches, s.single), (1, 16), "{s:?}");
        // Past it, batching again.
        batch.lock().single_until = Some(Instant::now());
        assert_eq!(together(&batch, &valid).await, vec![true; 8]);
        assert_eq!(batch.stats().batches, 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn more_than_a_batch_at_once_is_checked_in_batches_of_at_most_max_batch() {
        let key = cobo_test_key();
        let jobs = signed(&key, "many", 70);
        let batch = Ed25519Batch::new(key.verifying_key());
        assert_eq!(together(&batch, &jobs).await, vec![true; 70]);
        let s = batch.stats();
        // 32 + 32, then the last 6 together.
        assert_eq!((s.batches, s.failed, s.single), (3, 0, 0), "{s:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_request_is_verified_alone() {
        let key = cobo_test_key();
        let d = pseudo("lone", 0);
        let batch = Ed25519Batch::new(key.verifying_key());
        assert!(batch.verify(d, key.sign(&d)).await);
        assert!(!batch.verify(pseudo("lone", 1), key.sign(&d)).await);
        let s = batch.stats();
        assert_eq!((s.batches, s.single), (0, 2), "{s:?}");
    }

    /// Why config refuses small-order keys: under one, a batch passes a signature made with
    /// no private key at all, which `verify_strict` refuses.
    #[test]
    fn a_small_order_key_would_let_a_keyless_forgery_through_a_batch() {
        // The identity point as the key; the forgery: R = the identity, s = 0.
        let identity_hex = format!("01{}", "00".repeat(31));
        let identity = VerifyingKey::from_bytes(&bytes(&identity_hex)).unwrap();
        assert!(identity.is_weak());
        let forged = Signature::from_bytes(&bytes(&format!("{identity_hex}{}", "00".repeat(32))));
        let digest = pseudo("anything", 0);
        let msgs: [&[u8]; 2] = [&digest, &digest];
        assert!(
            ed25519_dalek::verify_batch(&msgs, &[forged, forged], &[identity, identity]).is_ok()
        );
        assert!(identity.verify_strict(&digest, &forged).is_err());
        assert!(super::super::CoboWaas2::new(&[identity_hex]).is_err());
    }
}
