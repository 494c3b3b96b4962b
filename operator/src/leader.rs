//! Leader election through a `coordination.k8s.io/v1` Lease, so that of
//! several operator replicas exactly one reconciles.
//!
//! The holder renews the Lease every [`RENEW_EVERY`]; a candidate takes it
//! over once it has not been renewed for [`LEASE_DURATION`]. Every write
//! carries the Lease's `resourceVersion`, so two candidates cannot both win.
//! A leader that fails to renew in time stops (the process exits and
//! Kubernetes restarts it as a candidate), as client-go's elector does:
//! reconciling on after losing the Lease could fight the new leader.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::{info, warn};

use crate::Error;

/// How long a Lease holds without renewal. 15 s, as client-go's default:
/// a crashed leader is replaced within that time.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews, leaving two more tries within the duration.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Takes part in the election for one Lease.
#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
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
    /// A candidate `identity` for Lease `name` in `namespace`.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Elector { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into() }
    }

    /// One attempt to acquire or renew the Lease.
    pub async fn try_acquire(&self) -> Result<Attempt, Error> {
        let now = Timestamp::now();
        let lease_error = |source| Error::ElectLeader { lease: self.name.clone(), source };
        let current = self.api.get_opt(&self.name).await.map_err(lease_error)?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec(now, now, 0)),
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
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renewed = spec.renew_time.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH);
        let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
        let expired = renewed + duration < now;
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = if holder == self.identity {
            let acquired = spec.acquire_time.as_ref().map(|t| t.0).unwrap_or(now);
            self.spec(acquired, now, transitions)
        } else if expired || holder.is_empty() {
            self.spec(now, now, transitions + 1)
        } else {
            return Ok(Attempt::Following { holder });
        };
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
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Waits until this candidate leads.
    pub async fn acquire(&self) {
        let mut last_holder = String::new();
        loop {
            match self.try_acquire().await {
                Ok(Attempt::Leading) => {
                    info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return;
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
            tokio::time::sleep(RENEW_EVERY).await;
        }
    }

    /// Gives the Lease up on a clean shutdown, so that a standby takes over
    /// at its next attempt (within [`RENEW_EVERY`]) instead of waiting for
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

    /// Renews the Lease until a renewal fails for longer than the Lease
    /// lasts; returns then (leadership is lost).
    pub async fn keep(&self) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match self.try_acquire().await {
                Ok(Attempt::Leading) => last_renewal = tokio::time::Instant::now(),
                Ok(Attempt::Following { holder }) => {
                    warn!(lease = %self.name, %holder, "the Lease was taken over");
                    return;
                }
                Err(error) => {
                    warn!(lease = %self.name, error = %crate::reconcile::error_chain(&error), "renewing the Lease failed");
                    if last_renewal.elapsed() >= LEASE_DURATION {
                        return;
                    }
                }
            }
        }
    }
}
