//! Password hashing: argon2id with one of OWASP's parameter sets, in
//! bounded memory.
//!
//! OWASP's Password Storage Cheat Sheet lists five argon2id settings that
//! "provide an equal level of defense" and differ only in how they trade
//! memory for passes: 46 MiB × 1, 19 MiB × 2 (the argon2 crate's default),
//! 12 MiB × 3, 9 MiB × 4 and 7 MiB × 5. We use 9 MiB × 4 ([`params`]): the
//! same work per hash as the crate's default (36 against 38 MiB of blocks
//! written), in half the memory, which a shop holding several work areas
//! at once feels in its RSS. Hashes made with other parameters (the crate's
//! default, before) still verify, and are made again with ours at the next
//! correct sign-in ([`needs_rehash`]).
//!
//! `Argon2::hash_password` allocates its work area and frees it after every
//! hash, and glibc keeps what is freed: after the first one it raises its
//! mmap threshold above the area's size, so the following areas come from
//! the heap arenas of whichever blocking threads ran them, and stay there
//! (1.4 GiB of RSS after 100 registrations at 19 MiB each).
//! Here the work areas are allocated once and reused: at most one per CPU
//! ([`Hasher::areas`]), and a hash waits for a free one. Memory stays at
//! that many times 9 MiB whatever the load, and no more hashes run at once
//! than there are CPUs to run them (a burst of registrations queues instead
//! of slowing every hash down together).
//!
//! An area unused for [`RELEASE_AFTER`] is freed, so a shop that signed
//! many users up an hour ago does not still hold their hashing memory
//! (the `commerce` binary's allocator gives freed memory back to the
//! system).
//!
//! The PHC strings are the crate's own (`$argon2id$v=19$m=9216,t=4,p=1$…`):
//! a hash made here verifies with `Argon2::verify_password`, and the other
//! way round.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::Semaphore;

/// Length of the random salt, in bytes (the crate's recommendation).
const SALT_LEN: usize = 16;

/// Most work areas a process keeps, however many CPUs it sees: 4 × 9 MiB.
const MAX_AREAS: usize = 4;

/// How long a work area may sit unused before it is freed.
pub const RELEASE_AFTER: Duration = Duration::from_secs(30);

/// Work areas for argon2, reused from hash to hash.
#[derive(Debug)]
pub struct Hasher {
    /// One permit per work area.
    permits: Arc<Semaphore>,
    /// The areas not in use (fewer than the permits until each was
    /// needed), with when each was last put back.
    idle: Mutex<Vec<(Vec<Block>, Instant)>>,
    areas: usize,
    /// Unused areas live this long.
    release_after: Duration,
    /// Whether the task that frees unused areas runs.
    releasing: OnceLock<()>,
}

impl Hasher {
    /// A hasher with at most `areas` work areas (at least one).
    pub fn new(areas: usize) -> Self {
        Self::with_release_after(areas, RELEASE_AFTER)
    }

    /// A hasher with at most `areas` work areas, each freed after
    /// `release_after` unused.
    pub fn with_release_after(areas: usize, release_after: Duration) -> Self {
        let areas = areas.max(1);
        Self {
            permits: Arc::new(Semaphore::new(areas)),
            idle: Mutex::new(Vec::new()),
            areas,
            release_after,
            releasing: OnceLock::new(),
        }
    }

    /// How many work areas are allocated and not in use.
    pub fn idle_areas(&self) -> usize {
        self.lock().len()
    }

    /// The process's hasher: one work area per CPU, at most [`MAX_AREAS`].
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<Hasher> = OnceLock::new();
        SHARED.get_or_init(|| {
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            Self::new(cpus.min(MAX_AREAS))
        })
    }

    /// How many work areas this hasher may hold.
    pub fn areas(&self) -> usize {
        self.areas
    }

    /// Hashes `password` with a new random salt into a PHC string.
    pub async fn hash(&'static self, password: String) -> Result<String, String> {
        let salt: [u8; SALT_LEN] = rand::random();
        self.with_area(move |area| hash_in(area, password.as_bytes(), &salt)).await?
    }

    /// Whether `password` matches the PHC string `hash`. A malformed hash
    /// matches nothing.
    pub async fn verify(&'static self, password: String, hash: String) -> bool {
        self.with_area(move |area| verify_in(area, password.as_bytes(), &hash)).await.unwrap_or(false)
    }

    /// Runs `work` on the blocking pool with a work area of its own, once
    /// one is free. The permit and the area go back when `work` ends, even
    /// if the caller stopped waiting for it (a client that hung up): the
    /// bound holds for the hashes still running, not only for those awaited.
    async fn with_area<T: Send + 'static>(
        &'static self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, String> {
        self.releasing.get_or_init(|| {
            tokio::spawn(self.release_unused());
        });
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| "the password hasher is closed".to_owned())?;
        tokio::task::spawn_blocking(move || {
            let mut area = self.lock().pop().map(|(area, _)| area).unwrap_or_default();
            let result = work(&mut area);
            self.lock().push((area, Instant::now()));
            drop(permit);
            result
        })
        .await
        .map_err(|error| format!("password hashing stopped: {error}"))
    }

    /// Frees the areas unused for `release_after`, checking a few times
    /// per period, for the life of the process.
    async fn release_unused(&'static self) {
        let mut ticks = tokio::time::interval(self.release_after / 4);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // Dropped outside the lock: freeing 9 MiB is not instant.
            let released: Vec<_> = {
                let mut idle = self.lock();
                let (stale, fresh) =
                    idle.drain(..).partition(|(_, since)| since.elapsed() >= self.release_after);
                *idle = fresh;
                stale
            };
            if !released.is_empty() {
                tracing::debug!(areas = released.len(), "unused password hashing memory freed");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Vec<Block>, Instant)>> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Memory of each hash in KiB (9 MiB): OWASP's fourth setting.
const MEMORY_KIB: u32 = 9 * 1024;

/// Passes over the memory: 4 with 9 MiB.
const PASSES: u32 = 4;

/// The parameters of every new hash: 9 MiB, 4 passes, 1 lane (see the
/// module's documentation for why).
pub fn params() -> Params {
    Params::new(MEMORY_KIB, PASSES, 1, None).expect("9 MiB, 4 passes and 1 lane are valid argon2 parameters")
}

/// Whether the PHC string `hash` was made with other parameters than
/// [`params`] (or another algorithm or version), so that it should be made
/// again while the password is at hand. A malformed string needs nothing:
/// it matches no password anyway.
pub fn needs_rehash(hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else { return false };
    let ours = params();
    let same = parsed.algorithm == Algorithm::Argon2id.ident()
        && parsed.version == Some(Version::V0x13.into())
        && Params::try_from(&parsed).is_ok_and(|theirs| {
            (theirs.m_cost(), theirs.t_cost(), theirs.p_cost())
                == (ours.m_cost(), ours.t_cost(), ours.p_cost())
        });
    !same
}

/// argon2id with [`params`] over `password` and `salt`, in `area`, as a
/// PHC string.
fn hash_in(area: &mut Vec<Block>, password: &[u8], salt: &[u8]) -> Result<String, String> {
    let params = params();
    let mut out = [0_u8; Params::DEFAULT_OUTPUT_LEN];
    compute(area, Algorithm::Argon2id, Version::V0x13, &params, password, salt, &mut out)
        .map_err(|error| error.to_string())?;
    let phc = |error: argon2::password_hash::phc::Error| error.to_string();
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|error| error.to_string())?,
        salt: Some(Salt::new(salt).map_err(phc)?),
        hash: Some(Output::new(&out).map_err(phc)?),
    };
    Ok(hash.to_string())
}

/// Recomputes the hash that the PHC string `hash` describes (its algorithm,
/// version, parameters and salt) over `password` in `area`, and compares
/// the outputs in constant time.
fn verify_in(area: &mut Vec<Block>, password: &[u8], hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else { return false };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else { return false };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else { return false };
    let mut out = vec![0_u8; expected.len()];
    if compute(area, algorithm, version, &params, password, salt.as_ref(), &mut out).is_err() {
        return false;
    }
    Output::new(&out).is_ok_and(|computed| computed == *expected)
}

/// Fills `out` with the argon2 hash of `password`, using `area` as the work
/// area: grown to what `params` need, and given back afterwards when that
/// is more than [`params`] need (an older hash with more memory), so that
/// the areas kept stay at their bound.
fn compute(
    area: &mut Vec<Block>,
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> argon2::Result<()> {
    let blocks = params.block_count();
    if area.len() < blocks {
        area.resize(blocks, Block::new());
    }
    let result = Argon2::new(algorithm, version, params.clone()).hash_password_into_with_memory(
        password,
        salt,
        out,
        &mut area[..blocks],
    );
    if area.len() > self::params().block_count() {
        *area = Vec::new();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHasher as _, PasswordVerifier as _};

    #[test]
    fn a_hash_made_in_a_reused_area_is_the_one_the_crate_makes_and_each_verifies_the_other() {
        let salt = [7_u8; SALT_LEN];
        let mut area = Vec::new();
        // A first hash leaves the area full of another password's blocks.
        hash_in(&mut area, b"something else", &[1_u8; SALT_LEN]).unwrap();
        let ours = hash_in(&mut area, b"correct horse", &salt).unwrap();
        let crate_with_ours = Argon2::new(Algorithm::Argon2id, Version::V0x13, params());
        let theirs = crate_with_ours.hash_password_with_salt(b"correct horse", &salt).unwrap().to_string();
        assert_eq!(ours, theirs);
        assert!(ours.starts_with("$argon2id$v=19$m=9216,t=4,p=1$"), "{ours}");
        assert!(verify_in(&mut area, b"correct horse", &theirs));
        assert!(
            Argon2::default().verify_password(b"correct horse", &PasswordHash::new(&ours).unwrap()).is_ok()
        );
        assert!(!verify_in(&mut area, b"wrong horse", &ours));
    }

    #[test]
    fn a_hash_with_the_crate_defaults_verifies_needs_a_rehash_and_leaves_no_larger_area() {
        let salt = [5_u8; SALT_LEN];
        let old = Argon2::default().hash_password_with_salt(b"older", &salt).unwrap().to_string();
        assert!(old.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{old}");
        let mut area = Vec::new();
        assert!(verify_in(&mut area, b"older", &old));
        assert!(area.len() <= params().block_count(), "a 19 MiB area was kept: {} blocks", area.len());
        assert!(!verify_in(&mut area, b"newer", &old));
        assert!(needs_rehash(&old));
        let new = hash_in(&mut area, b"older", &salt).unwrap();
        assert!(!needs_rehash(&new), "{new}");
        assert_eq!(area.len(), params().block_count(), "our own area is kept for the next hash");
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, params())
            .hash_password_with_salt(b"older", &salt)
            .unwrap()
            .to_string();
        assert!(needs_rehash(&argon2i), "{argon2i}");
        assert!(!needs_rehash("not a phc string"));
    }

    #[test]
    fn a_malformed_or_truncated_hash_matches_nothing() {
        let mut area = Vec::new();
        let hash = hash_in(&mut area, b"pw", &[3_u8; SALT_LEN]).unwrap();
        assert!(!verify_in(&mut area, b"pw", "not a phc string"));
        assert!(!verify_in(&mut area, b"pw", &hash[..hash.rfind('$').unwrap()]), "no output");
        assert!(!verify_in(&mut area, b"pw", &hash.replace("argon2id", "argon2x")), "unknown algorithm");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_work_area_unused_for_the_release_period_is_freed_and_a_later_hash_still_works() {
        let hasher: &'static Hasher =
            Box::leak(Box::new(Hasher::with_release_after(2, Duration::from_millis(200))));
        let hash = hasher.hash("first".to_owned()).await.expect("hash");
        assert_eq!(hasher.idle_areas(), 1, "the area is kept for the next hash");
        let deadline = Instant::now() + Duration::from_secs(5);
        while hasher.idle_areas() > 0 {
            assert!(Instant::now() < deadline, "the unused area was never freed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(hasher.verify("first".to_owned(), hash).await, "a new area verifies the old hash");
        assert_eq!(hasher.idle_areas(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_work_areas_exist_than_the_hasher_allows_however_many_hash_at_once() {
        let hasher: &'static Hasher = Box::leak(Box::new(Hasher::new(2)));
        let running: Vec<_> = (0..6).map(|i| tokio::spawn(hasher.hash(format!("password {i}")))).collect();
        let mut hashes = Vec::new();
        for hash in running {
            hashes.push(hash.await.unwrap().unwrap());
        }
        let areas = hasher.lock().len();
        assert!((1..=2).contains(&areas), "{areas} work areas for 6 hashes, at most 2 allowed");
        assert!(hasher.verify("password 4".to_owned(), hashes[4].clone()).await);
        assert!(!hasher.verify("password 4".to_owned(), hashes[3].clone()).await);
        assert!(hasher.lock().len() <= 2);
    }
}
