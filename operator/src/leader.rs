//! Leader election through a `coordination.k8s.io/v1` Lease, so that of
//! several operator replicas exactly one reconciles.
//!
//! The timing is client-go's default (`leaderelection.LeaderElectionConfig`):
//!
//! | value | default | meaning |
//! |---|---|---|
//! | [`LEASE_DURATION`] | 15 s | how long a candidate waits, after it last saw the Lease change, before it takes the Lease over |
//! | [`RENEW_DEADLINE`] | 10 s | how long the leader keeps reconciling without a successful renewal; then it steps down |
//! | [`RETRY_PERIOD`] | 2 s | the pause between attempts: renewals of the leader, tries of the candidates |
//!
//! Two rules keep two leaders from reconciling at once:
//!
//! - **Expiry is judged on the observer's own monotonic clock.** A candidate
//!   remembers the Lease's record (holder, `renewTime`, `leaseTransitions`)
//!   and when it last saw that record change; it takes the Lease over only
//!   once the record has stayed unchanged for the Lease's duration by its
//!   own clock. The holder's `renewTime` is never compared with the local
//!   wall clock, so clock skew between nodes cannot make a live Lease look
//!   expired (nor a dead one live). A candidate that has just started waits
//!   one full duration before taking over a held Lease.
//! - **The leader steps down before anyone can take over.** The leader
//!   counts from the moment it *sent* its last successful renewal; a
//!   candidate counts from the moment it *received* the renewed record, which
//!   is later. The leader stops reconciling once [`RENEW_DEADLINE`] has
//!   passed without a successful renewal (a hung request is cut off at the
//!   deadline), which is [`LEASE_DURATION`] − [`RENEW_DEADLINE`] = 5 s before
//!   the earliest takeover: margin for a reconcile being dropped and for
//!   clocks that run at slightly different rates.
//!
//! Every write carries the Lease's `resourceVersion`, so two candidates
//! cannot both win. A leader that loses the Lease stops (the process exits
//! and Kubernetes restarts it as a candidate), as client-go's elector does;
//! on a clean shutdown it releases the Lease so that a standby takes over at
//! its next try instead of waiting out the duration.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::Error;

/// How long a Lease holds without a change seen by a candidate: 15 s, as
/// client-go's default. A crashed leader is replaced within about that time
/// (plus up to one [`RETRY_PERIOD`]). Written into the Lease's
/// `leaseDurationSeconds`, and read from there by the candidates.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the leader may go without a successful renewal before it stops
/// reconciling: 10 s, as client-go's default. Shorter than
/// [`LEASE_DURATION`], so that the leader has stepped down before a
/// candidate can take the Lease over; long enough for a few retries.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// The pause between two attempts, of the leader to renew and of a
/// candidate to acquire: 2 s, as client-go's default. Leaves the leader
/// several renewals within [`RENEW_DEADLINE`], and a standby takes a
/// released Lease within this time.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

// The ordering the safety argument above rests on.
const _: () = assert!(RETRY_PERIOD.as_millis() < RENEW_DEADLINE.as_millis());
const _: () = assert!(RENEW_DEADLINE.as_millis() < LEASE_DURATION.as_millis());

/// The three durations of an election; [`Timing::default`] is the constants
/// above. Tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// See [`LEASE_DURATION`].
    pub lease_duration: Duration,
    /// See [`RENEW_DEADLINE`]; must be shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// See [`RETRY_PERIOD`]; must be shorter than `renew_deadline`.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { lease_duration: LEASE_DURATION, renew_deadline: RENEW_DEADLINE, retry_period: RETRY_PERIOD }
    }
}

/// The parts of a Lease whose change shows that its holder is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `holderIdentity`; `None` when empty (released).
    pub holder: Option<String>,
    /// `renewTime`, by the holder's clock: compared for change only.
    pub renew_time: Option<Timestamp>,
    /// `leaseTransitions`.
    pub transitions: i32,
    /// `leaseDurationSeconds`, as the holder declared it.
    pub duration: Option<Duration>,
}

impl Record {
    /// The record of a Lease's spec.
    pub fn of(spec: &LeaseSpec) -> Self {
        Record {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
        }
    }
}

/// A record as last seen, and when (on the observer's monotonic clock) it
/// was first seen in that state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The record.
    pub record: Record,
    /// When it was first seen as it is.
    pub since: Instant,
}

/// Folds a record read at `now` into the previous observation: a changed
/// record (or the first one) restarts the clock, an unchanged one keeps it.
pub fn observe(previous: Option<&Observation>, record: Record, now: Instant) -> Observation {
    match previous {
        Some(previous) if previous.record == record => previous.clone(),
        _ => Observation { record, since: now },
    }
}

/// What a candidate does about a Lease it has observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It holds the Lease: renew it.
    Renew,
    /// The Lease is free or has expired: take it over.
    TakeOver,
    /// Another holder's Lease is live: wait.
    Follow {
        /// Its identity.
        holder: String,
    },
}

/// What candidate `identity` does at `now` (monotonic) about the Lease as
/// observed. A held Lease has expired once its record has not changed for
/// its declared duration (else `lease_duration`), measured from when this
/// candidate saw it change: never from the holder's `renewTime`.
pub fn decide(identity: &str, observation: &Observation, now: Instant, lease_duration: Duration) -> Decision {
    let Some(holder) = &observation.record.holder else { return Decision::TakeOver };
    if holder == identity {
        return Decision::Renew;
    }
    let duration = observation.record.duration.unwrap_or(lease_duration);
    if now.saturating_duration_since(observation.since) >= duration {
        Decision::TakeOver
    } else {
        Decision::Follow { holder: holder.clone() }
    }
}

/// Whether a leader whose last successful renewal was sent at `renewed_at`
/// must stop reconciling at `now`.
pub fn must_step_down(renewed_at: Instant, now: Instant, renew_deadline: Duration) -> bool {
    now.saturating_duration_since(renewed_at) >= renew_deadline
}

/// Takes part in the election for one Lease.
#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The Lease as this candidate last saw it; shared by clones.
    observed: Arc<Mutex<Option<Observation>>>,
}

/// What one attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// This candidate holds the Lease (acquired or renewed).
    Leading,
    /// Another candidate holds a live Lease.
    Following {
        /// Its identity.
        holder: String,
    },
}

impl Elector {
    /// A candidate `identity` for Lease `name` in `namespace`, with the
    /// default [`Timing`].
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self::with_timing(client, namespace, name, identity, Timing::default())
    }

    /// A candidate with its own timing.
    pub fn with_timing(client: Client, namespace: &str, name: &str, identity: &str, timing: Timing) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timing,
            observed: Arc::default(),
        }
    }

    /// One attempt to acquire or renew the Lease.
    pub async fn try_acquire(&self) -> Result<Attempt, Error> {
        let lease_error = |source| Error::ElectLeader { lease: self.name.clone(), source };
        let current = self.api.get_opt(&self.name).await.map_err(lease_error)?;
        // The wall clock only stamps acquireTime/renewTime for people (and
        // client-go tools) to read; decisions use the monotonic clock.
        let wall = Timestamp::now();
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec(wall, wall, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                // Another candidate created it first.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    Ok(Attempt::Following { holder: "another candidate".into() })
                }
                Err(source) => Err(lease_error(source)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let observation = {
            let mut observed = self.observed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let observation = observe(observed.as_ref(), Record::of(&spec), Instant::now());
            *observed = Some(observation.clone());
            observation
        };
        let transitions = observation.record.transitions;
        let new_spec = match decide(&self.identity, &observation, Instant::now(), self.timing.lease_duration)
        {
            Decision::Renew => {
                let acquired = spec.acquire_time.as_ref().map(|t| t.0).unwrap_or(wall);
                self.spec(acquired, wall, transitions)
            }
            Decision::TakeOver => self.spec(wall, wall, transitions + 1),
            Decision::Follow { holder } => return Ok(Attempt::Following { holder }),
        };
        let holder = observation.record.holder.unwrap_or_default();
        lease.spec = Some(new_spec);
        // `replace` sends the resourceVersion read above: a concurrent
        // change makes it fail with 409 instead of overwriting.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Following { holder }),
            Err(source) => Err(lease_error(source)),
        }
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Waits until this candidate leads; returns when the successful attempt
    /// started, which is what [`keep`](Self::keep) counts the renew deadline
    /// from.
    pub async fn acquire(&self) -> Instant {
        let mut last_holder = String::new();
        loop {
            let started = Instant::now();
            match self.try_acquire().await {
                Ok(Attempt::Leading) => {
                    info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return started;
                }
                Ok(Attempt::Following { holder }) => {
                    if holder != last_holder {
                        info!(lease = %self.name, %holder, "another replica leads; standing by");
                        last_holder = holder;
                    }
                }
                Err(error) => {
                    warn!(lease = %self.name, error = %crate::reconcile::error_chain(&error), "leader election failed")
                }
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Gives the Lease up on a clean shutdown, so that a standby takes over
    /// at its next attempt (within [`RETRY_PERIOD`]) instead of waiting for
    /// the Lease to expire. A Lease held by another is left alone; failing
    /// to release only costs the standby the rest of [`LEASE_DURATION`].
    pub async fn release(&self) {
        let mut lease = match self.api.get_opt(&self.name).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(error) => {
                warn!(lease = %self.name, %error, "cannot read the Lease to release it");
                return;
            }
        };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        // The resourceVersion read above: a Lease renewed by a new holder in
        // between is not released.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => info!(lease = %self.name, identity = %self.identity, "released the Lease"),
            Err(error) => warn!(lease = %self.name, %error, "releasing the Lease failed"),
        }
    }

    /// Renews the Lease every retry period, counting from `renewed_at` (when
    /// the acquiring attempt started); returns, and the caller must stop
    /// reconciling, once the Lease was taken over or no renewal succeeded
    /// within the renew deadline. A renewal still in flight at the deadline
    /// is abandoned: a hung apiserver connection cannot keep a leader
    /// reconciling past it.
    pub async fn keep(&self, mut renewed_at: Instant) {
        loop {
            let deadline = renewed_at + self.timing.renew_deadline;
            tokio::time::sleep_until((Instant::now() + self.timing.retry_period).min(deadline)).await;
            if must_step_down(renewed_at, Instant::now(), self.timing.renew_deadline) {
                warn!(lease = %self.name, deadline = ?self.timing.renew_deadline, "no renewal of the Lease within the renew deadline; stepping down");
                return;
            }
            let started = Instant::now();
            match tokio::time::timeout_at(deadline, self.try_acquire()).await {
                Ok(Ok(Attempt::Leading)) => renewed_at = started,
                Ok(Ok(Attempt::Following { holder })) => {
                    warn!(lease = %self.name, %holder, "the Lease was taken over");
                    return;
                }
                Ok(Err(error)) => {
                    warn!(lease = %self.name, error = %crate::reconcile::error_chain(&error), "renewing the Lease failed")
                }
                Err(_elapsed) => {
                    warn!(lease = %self.name, deadline = ?self.timing.renew_deadline, "renewing the Lease did not finish within the renew deadline; stepping down");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};

    const ME: &str = "operator-a";
    const OTHER: &str = "operator-b";

    fn record(holder: Option<&str>, renew_time: Timestamp, transitions: i32) -> Record {
        Record {
            holder: holder.map(str::to_owned),
            renew_time: Some(renew_time),
            transitions,
            duration: Some(LEASE_DURATION),
        }
    }

    fn wall(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn the_default_timing_renews_several_times_before_the_deadline_and_steps_down_before_expiry() {
        let timing = Timing::default();
        assert_eq!(
            (timing.lease_duration, timing.renew_deadline, timing.retry_period),
            (Duration::from_secs(15), Duration::from_secs(10), Duration::from_secs(2))
        );
        assert!(timing.renew_deadline < timing.lease_duration);
        assert!(timing.renew_deadline >= 3 * timing.retry_period);
    }

    #[test]
    fn a_held_lease_expires_by_the_observers_clock_since_it_last_changed() {
        let t0 = Instant::now();
        let first = observe(None, record(Some(OTHER), wall(1_000), 3), t0);
        assert_eq!(first.since, t0);
        // Unchanged: the clock keeps running from the first sight.
        let later = observe(Some(&first), record(Some(OTHER), wall(1_000), 3), t0 + Duration::from_secs(9));
        assert_eq!(later.since, t0);
        let follow = Decision::Follow { holder: OTHER.into() };
        assert_eq!(decide(ME, &later, t0 + Duration::from_secs(14), LEASE_DURATION), follow);
        assert_eq!(decide(ME, &later, t0 + LEASE_DURATION, LEASE_DURATION), Decision::TakeOver);
        // Renewed (renewTime, holder or transitions changed): the clock restarts.
        for changed in [
            record(Some(OTHER), wall(1_002), 3),
            record(Some("operator-c"), wall(1_000), 3),
            record(Some(OTHER), wall(1_000), 4),
        ] {
            let renewed = observe(Some(&later), changed, t0 + Duration::from_secs(14));
            assert_eq!(renewed.since, t0 + Duration::from_secs(14));
            assert!(matches!(
                decide(ME, &renewed, t0 + Duration::from_secs(20), LEASE_DURATION),
                Decision::Follow { .. }
            ));
        }
    }

    #[test]
    fn a_holders_clock_far_behind_or_ahead_does_not_change_when_the_lease_expires() {
        let t0 = Instant::now();
        let now_wall = Timestamp::now().as_second();
        // A holder whose clock is an hour behind: its renewTime looks long
        // past, yet it renews on time; seen just now, the Lease is live.
        let behind = observe(None, record(Some(OTHER), wall(now_wall - 3_600), 1), t0);
        assert_eq!(
            decide(ME, &behind, t0 + Duration::from_secs(1), LEASE_DURATION),
            Decision::Follow { holder: OTHER.into() }
        );
        // A holder whose clock is an hour ahead, dead since: its renewTime
        // looks fresh for an hour, yet the Lease expires after its duration.
        let ahead = observe(None, record(Some(OTHER), wall(now_wall + 3_600), 1), t0);
        let unchanged = observe(Some(&ahead), ahead.record.clone(), t0 + Duration::from_secs(10));
        assert_eq!(decide(ME, &unchanged, t0 + LEASE_DURATION, LEASE_DURATION), Decision::TakeOver);
    }

    #[test]
    fn the_holders_declared_duration_wins_over_the_observers_default() {
        let t0 = Instant::now();
        let mut long = record(Some(OTHER), wall(1_000), 0);
        long.duration = Some(Duration::from_secs(60));
        let observation = observe(None, long, t0);
        assert!(matches!(
            decide(ME, &observation, t0 + Duration::from_secs(30), LEASE_DURATION),
            Decision::Follow { .. }
        ));
        assert_eq!(
            decide(ME, &observation, t0 + Duration::from_secs(60), LEASE_DURATION),
            Decision::TakeOver
        );
    }

    #[test]
    fn an_own_lease_is_renewed_and_a_released_one_taken_at_once() {
        let t0 = Instant::now();
        assert_eq!(
            decide(ME, &observe(None, record(Some(ME), wall(1), 0), t0), t0, LEASE_DURATION),
            Decision::Renew
        );
        assert_eq!(
            decide(ME, &observe(None, record(None, wall(1), 0), t0), t0, LEASE_DURATION),
            Decision::TakeOver
        );
        let spec = LeaseSpec { holder_identity: Some(String::new()), ..LeaseSpec::default() };
        assert_eq!(Record::of(&spec).holder, None);
    }

    #[test]
    fn the_leader_steps_down_at_the_renew_deadline_before_the_lease_can_expire() {
        let renewed = Instant::now();
        assert!(!must_step_down(renewed, renewed + Duration::from_secs(9), RENEW_DEADLINE));
        assert!(must_step_down(renewed, renewed + RENEW_DEADLINE, RENEW_DEADLINE));
        // A candidate that saw that renewal (no earlier than it was sent)
        // can take over only after LEASE_DURATION, later than the step-down.
        let seen = observe(None, record(Some(ME), wall(1), 0), renewed);
        assert!(matches!(
            decide(OTHER, &seen, renewed + RENEW_DEADLINE, LEASE_DURATION),
            Decision::Follow { .. }
        ));
    }

    // ------------------------------------------------ against a fake apiserver

    /// How the fake apiserver answers.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Mode {
        /// Serves GET and PUT of the Lease.
        Serve,
        /// Answers every request with a 500.
        Fail,
        /// Never answers.
        Hang,
    }

    /// A Lease store behind a tower-test mock: what the elector reads and
    /// writes, and how many PUTs it made.
    #[derive(Debug)]
    struct FakeLease {
        lease: Mutex<Value>,
        mode: Mutex<Mode>,
        puts: Mutex<u32>,
    }

    impl FakeLease {
        fn new(holder: &str, renew_time: &str) -> Arc<Self> {
            Arc::new(FakeLease {
                lease: Mutex::new(json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "lease", "namespace": "ns", "resourceVersion": "1"},
                    "spec": {
                        "holderIdentity": holder, "leaseDurationSeconds": 15,
                        "acquireTime": renew_time, "renewTime": renew_time, "leaseTransitions": 0,
                    },
                })),
                mode: Mutex::new(Mode::Serve),
                puts: Mutex::new(0),
            })
        }

        fn set_mode(&self, mode: Mode) {
            *self.mode.lock().unwrap() = mode;
        }

        fn puts(&self) -> u32 {
            *self.puts.lock().unwrap()
        }

        fn holder(&self) -> Value {
            self.lease.lock().unwrap()["spec"]["holderIdentity"].clone()
        }

        async fn handle(&self, request: Request<Body>) -> Response<Body> {
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.unwrap();
            let (status, value) = match parts.method {
                Method::GET => (StatusCode::OK, self.lease.lock().unwrap().clone()),
                Method::PUT => {
                    let mut stored = self.lease.lock().unwrap();
                    let mut sent: Value = serde_json::from_slice(&body).unwrap();
                    if sent["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
                        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409});
                        return json_response(StatusCode::CONFLICT, &conflict);
                    }
                    let version: u64 =
                        stored["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
                    sent["metadata"]["resourceVersion"] = json!((version + 1).to_string());
                    *stored = sent.clone();
                    *self.puts.lock().unwrap() += 1;
                    (StatusCode::OK, sent)
                }
                method => panic!("the fake serves no {method} of a Lease"),
            };
            json_response(status, &value)
        }
    }

    fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap()
    }

    /// An elector named `identity` whose client talks to `fake`.
    fn elector(fake: &Arc<FakeLease>, identity: &str, timing: Timing) -> Elector {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = fake.clone();
        tokio::spawn(async move {
            // Requests left unanswered in Hang mode stay pending here.
            let mut pending = Vec::new();
            while let Some((request, respond)) = handle.next_request().await {
                let mode = *fake.mode.lock().unwrap();
                match mode {
                    Mode::Serve => respond.send_response(fake.handle(request).await),
                    Mode::Fail => {
                        let failure = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500});
                        respond.send_response(json_response(StatusCode::INTERNAL_SERVER_ERROR, &failure));
                    }
                    Mode::Hang => pending.push(respond),
                }
            }
        });
        Elector::with_timing(Client::new(service, "ns"), "ns", "lease", identity, timing)
    }

    /// Short enough for a test, in the same proportions as the defaults.
    const FAST: Timing = Timing {
        lease_duration: Duration::from_millis(1_500),
        renew_deadline: Duration::from_millis(1_000),
        retry_period: Duration::from_millis(200),
    };

    /// The leader renews once, then the apiserver stops answering (or
    /// fails); `keep` must return at the renew deadline, before a candidate
    /// that saw the last renewal could take the Lease over.
    async fn steps_down_in_time(mode: Mode) {
        let fake = FakeLease::new(ME, "2026-01-01T00:00:00.000000Z");
        let leader = elector(&fake, ME, FAST);
        let started = Instant::now();
        let keeping = tokio::spawn({
            let leader = leader.clone();
            async move {
                leader.keep(started).await;
                Instant::now()
            }
        });
        // The first renewal, one retry period in, succeeds.
        while fake.puts() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let renewed = Instant::now();
        fake.set_mode(mode);
        let stepped_down = tokio::time::timeout(10 * FAST.lease_duration, keeping)
            .await
            .expect("the leader never stepped down")
            .unwrap();
        let since_renewal = stepped_down.saturating_duration_since(renewed);
        assert!(
            stepped_down.saturating_duration_since(started) >= FAST.renew_deadline,
            "stepped down early, {since_renewal:?} after the last renewal"
        );
        assert!(
            since_renewal < FAST.lease_duration,
            "{mode:?}: still leading {since_renewal:?} after the last renewal, when the Lease may be taken over"
        );
        assert_eq!(fake.holder(), json!(ME));
    }

    #[tokio::test]
    async fn a_leader_whose_renewals_hang_steps_down_at_the_renew_deadline() {
        steps_down_in_time(Mode::Hang).await;
    }

    #[tokio::test]
    async fn a_leader_whose_renewals_fail_steps_down_at_the_renew_deadline() {
        steps_down_in_time(Mode::Fail).await;
    }

    #[tokio::test]
    async fn a_lease_whose_renew_time_looks_old_by_the_local_clock_is_not_taken_on_first_sight() {
        // The holder's clock is a day behind: its renewTime is a day old.
        let yesterday = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(24);
        let fake = FakeLease::new(OTHER, &yesterday.to_string());
        let candidate = elector(&fake, ME, FAST);
        assert_eq!(candidate.try_acquire().await.unwrap(), Attempt::Following { holder: OTHER.into() });
        assert_eq!(fake.puts(), 0);
        // Unchanged for the Lease's duration (15 s, as the holder wrote it),
        // it has expired; a renewal in between restarts the wait.
        candidate.observed.lock().unwrap().as_mut().unwrap().since -= Duration::from_secs(14);
        assert!(matches!(candidate.try_acquire().await.unwrap(), Attempt::Following { .. }));
        candidate.observed.lock().unwrap().as_mut().unwrap().since -= Duration::from_secs(1);
        assert_eq!(candidate.try_acquire().await.unwrap(), Attempt::Leading);
        assert_eq!(fake.holder(), json!(ME));
        assert_eq!(fake.lease.lock().unwrap()["spec"]["leaseTransitions"], json!(1));
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_the_next_try() {
        let fake = FakeLease::new(OTHER, "2026-01-01T00:00:00.000000Z");
        let holder = elector(&fake, OTHER, FAST);
        let candidate = elector(&fake, ME, FAST);
        assert!(matches!(candidate.try_acquire().await.unwrap(), Attempt::Following { .. }));
        holder.release().await;
        assert_eq!(fake.holder(), Value::Null);
        assert_eq!(candidate.try_acquire().await.unwrap(), Attempt::Leading);
    }
}
