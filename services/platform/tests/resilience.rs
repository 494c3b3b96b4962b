//! The resilient client channel: circuit breaker, retries of idempotent
//! calls, deadlines.
//!
//! Most tests call the probe service in process, through the same tonic
//! client and server code as over the network, with tokio's clock paused:
//! backoffs, open periods and deadlines pass instantly and exactly. The last
//! tests use a real server (and a closed port) on loopback with real time.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use commerce_platform::admin::Metrics;
use commerce_platform::readiness::Readiness;
use commerce_platform::resilience::{
    BreakerState, ClientArgs, IdempotentMethods, ResilientChannel, idempotent,
};
use common::{PROBE_PATH, Probe, call, start_server};
use tokio::sync::Notify;
use tonic::transport::Endpoint;
use tonic::{Code, Request, Response, Status};

const OPEN_FOR: Duration = Duration::from_secs(10);

fn args() -> ClientArgs {
    ClientArgs {
        deadline: Duration::from_secs(2),
        max_retries: 2,
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(400),
        breaker_failures: 3,
        breaker_open: OPEN_FOR,
        half_open_probes: 1,
    }
}

/// A probe that answers call number `n` (from 0) with `script(n)` and
/// counts how often it was reached.
fn scripted(
    script: impl Fn(usize) -> Result<String, Status> + Send + Sync + 'static,
) -> (Probe, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(script);
    let probe = {
        let calls = calls.clone();
        Probe::new(move |_| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let outcome = script(n).map(Response::new);
            async move { outcome }
        })
    };
    (probe, calls)
}

fn unavailable() -> Status {
    Status::unavailable("pod restarting")
}

fn plain() -> Request<String> {
    Request::new("hello".to_owned())
}

/// Drives the breaker open with `failures` non-retried failing calls.
async fn open(channel: &ResilientChannel<Probe>, failures: usize) {
    for _ in 0..failures {
        let status = call(channel.clone(), plain()).await.expect_err("the peer fails");
        assert_eq!(status.code(), Code::Unavailable);
    }
    assert_eq!(channel.breaker().state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_after_the_configured_consecutive_failures() {
    let (probe, calls) = scripted(|_| Err(unavailable()));
    let metrics = Metrics::new("test");
    let channel = ResilientChannel::new("probe", probe, &args()).with_metrics(&metrics);

    for _ in 0..2 {
        call(channel.clone(), plain()).await.expect_err("the peer fails");
        assert_eq!(channel.breaker().state(), BreakerState::Closed, "below the threshold");
    }
    call(channel.clone(), plain()).await.expect_err("the peer fails");
    assert_eq!(channel.breaker().state(), BreakerState::Open);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let text = metrics.encode().expect("encodes");
    assert!(text.contains(r#"commerce_grpc_client_circuit_state{peer="probe"} 2"#), "{text}");
}

#[tokio::test(start_paused = true)]
async fn application_errors_do_not_count_towards_opening() {
    let (probe, calls) =
        scripted(|n| if n % 2 == 0 { Err(unavailable()) } else { Err(Status::not_found("no")) });
    let channel = ResilientChannel::new("probe", probe, &args());
    for _ in 0..10 {
        call(channel.clone(), plain()).await.expect_err("fails");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    assert_eq!(channel.breaker().state(), BreakerState::Closed, "failures were never consecutive");
}

#[tokio::test(start_paused = true)]
async fn one_subjects_spent_quota_never_opens_the_breaker_but_an_overloaded_peer_does() {
    // Someone guessing one account's password gets its sign-ins refused:
    // that must not cut every other user off the peer.
    let (probe, calls) = scripted(|_| {
        Err(commerce_platform::quota::exceeded(
            "paused",
            "account:1",
            "failed sign-ins",
            Duration::from_secs(30),
        ))
    });
    let channel = ResilientChannel::new("probe", probe, &args());
    for _ in 0..10 {
        let status = call(channel.clone(), plain()).await.expect_err("refused");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(commerce_platform::quota::retry_after(&status), Some(Duration::from_secs(30)));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10, "every call reached the peer");
    assert_eq!(channel.breaker().state(), BreakerState::Closed);

    let (probe, _) = scripted(|_| Err(Status::resource_exhausted("overloaded")));
    let channel = ResilientChannel::new("probe", probe, &args());
    for _ in 0..3 {
        call(channel.clone(), plain()).await.expect_err("overloaded");
    }
    assert_eq!(channel.breaker().state(), BreakerState::Open, "an overloaded peer still counts");
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_fails_fast_without_calling_the_peer() {
    let (probe, calls) = scripted(|_| Err(unavailable()));
    let metrics = Metrics::new("test");
    let channel = ResilientChannel::new("probe", probe, &args()).with_metrics(&metrics);
    open(&channel, 3).await;

    for _ in 0..5 {
        let status = call(channel.clone(), idempotent("hello".to_owned())).await.expect_err("fails fast");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("circuit open"), "{}", status.message());
    }
    tokio::time::advance(OPEN_FOR - Duration::from_millis(1)).await;
    call(channel.clone(), plain()).await.expect_err("still open just before the period ends");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the peer was not called while open");
    let text = metrics.encode().expect("encodes");
    assert!(text.contains(r#"commerce_grpc_client_rejected_total{peer="probe"} 6"#), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_successful_half_open_probe_closes_the_breaker() {
    let (probe, calls) = scripted(|n| if n < 3 { Err(unavailable()) } else { Ok("recovered".to_owned()) });
    let channel = ResilientChannel::new("probe", probe, &args());
    open(&channel, 3).await;

    tokio::time::advance(OPEN_FOR).await;
    assert_eq!(call(channel.clone(), plain()).await.expect("the probe succeeds"), "recovered");
    assert_eq!(channel.breaker().state(), BreakerState::Closed);
    for _ in 0..3 {
        call(channel.clone(), plain()).await.expect("calls flow again");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 7);
}

#[tokio::test(start_paused = true)]
async fn a_failed_half_open_probe_reopens_the_breaker() {
    let (probe, calls) = scripted(|n| if n < 4 { Err(unavailable()) } else { Ok("recovered".to_owned()) });
    let channel = ResilientChannel::new("probe", probe, &args());
    open(&channel, 3).await;

    tokio::time::advance(OPEN_FOR).await;
    let status = call(channel.clone(), plain()).await.expect_err("the probe fails");
    assert!(!status.message().contains("circuit open"), "the probe reached the peer: {}", status.message());
    assert_eq!(channel.breaker().state(), BreakerState::Open);
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    let status = call(channel.clone(), plain()).await.expect_err("open again: fails fast");
    assert!(status.message().contains("circuit open"), "{}", status.message());
    assert_eq!(calls.load(Ordering::SeqCst), 4, "a fresh open period started with the failed probe");

    tokio::time::advance(OPEN_FOR).await;
    call(channel.clone(), plain()).await.expect("the next probe succeeds");
    assert_eq!(channel.breaker().state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_only_the_configured_number_of_probes_through() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let probe = {
        let (failing, entered, release) = (failing.clone(), entered.clone(), release.clone());
        Probe::new(move |_| {
            let (failing, entered, release) = (failing.clone(), entered.clone(), release.clone());
            async move {
                if failing.load(Ordering::SeqCst) {
                    return Err(unavailable());
                }
                entered.notify_one();
                release.notified().await;
                Ok(Response::new("slow probe".to_owned()))
            }
        })
    };
    let channel =
        ResilientChannel::new("probe", probe, &ClientArgs { deadline: Duration::from_secs(60), ..args() });
    open(&channel, 3).await;
    failing.store(false, Ordering::SeqCst);

    tokio::time::advance(OPEN_FOR).await;
    let first_probe = tokio::spawn(call(channel.clone(), plain()));
    entered.notified().await;
    assert_eq!(channel.breaker().state(), BreakerState::HalfOpen);
    let status = call(channel.clone(), plain()).await.expect_err("no second probe while one is in flight");
    assert!(status.message().contains("circuit open"), "{}", status.message());

    release.notify_one();
    assert_eq!(first_probe.await.expect("task").expect("the probe succeeds"), "slow probe");
    assert_eq!(channel.breaker().state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn idempotent_calls_are_retried_on_unavailable() {
    let (probe, calls) =
        scripted(|n| if n < 2 { Err(unavailable()) } else { Ok("third time lucky".to_owned()) });
    let metrics = Metrics::new("test");
    let channel = ResilientChannel::new("probe", probe, &args()).with_metrics(&metrics);

    let answer = call(channel.clone(), idempotent("hello".to_owned())).await.expect("retries succeed");
    assert_eq!(answer, "third time lucky");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let text = metrics.encode().expect("encodes");
    assert!(text.contains(r#"commerce_grpc_client_retries_total{peer="probe"} 2"#), "{text}");
}

#[tokio::test(start_paused = true)]
async fn retries_stop_after_the_configured_maximum() {
    let (probe, calls) = scripted(|_| Err(unavailable()));
    let channel = ResilientChannel::new("probe", probe, &ClientArgs { breaker_failures: 100, ..args() });
    let status = call(channel, idempotent("hello".to_owned())).await.expect_err("the peer stays down");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "one attempt and two retries");
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_calls_are_not_retried() {
    let (probe, calls) = scripted(|n| if n < 2 { Err(unavailable()) } else { Ok("too late".to_owned()) });
    let channel = ResilientChannel::new("probe", probe, &args());
    let status = call(channel, plain()).await.expect_err("no retry");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn idempotent_calls_are_not_retried_on_answers_or_overload() {
    for status in [Status::not_found("no such product"), Status::resource_exhausted("shedding load")] {
        let code = status.code();
        let (probe, calls) = scripted(move |_| Err(status.clone()));
        let channel = ResilientChannel::new("probe", probe, &args());
        let returned = call(channel, idempotent("hello".to_owned())).await.expect_err("fails");
        assert_eq!(returned.code(), code);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{code:?} must not be retried");
    }
}

#[tokio::test(start_paused = true)]
async fn methods_declared_idempotent_are_retried_without_a_marker() {
    let (probe, calls) = scripted(|n| if n < 1 { Err(unavailable()) } else { Ok("ok".to_owned()) });
    let channel = ResilientChannel::new("probe", probe, &args())
        .with_idempotent_methods(IdempotentMethods::new([PROBE_PATH]));
    assert_eq!(call(channel, plain()).await.expect("retried"), "ok");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_answers_gives_deadline_exceeded() {
    let probe = Probe::new(|_| async {
        std::future::pending::<()>().await;
        Ok(Response::new(String::new()))
    });
    let channel = ResilientChannel::new("probe", probe, &args());
    let started = tokio::time::Instant::now();
    let status = call(channel.clone(), idempotent("hello".to_owned())).await.expect_err("times out");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(started.elapsed(), Duration::from_secs(2), "the deadline covers all attempts");

    // A request's own timeout overrides the default deadline.
    let mut request = plain();
    request.set_timeout(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let status = call(channel, request).await.expect_err("times out");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}

/// Real time from here on: a real server and real connections.
#[tokio::test]
async fn an_idempotent_call_to_a_real_server_rides_out_a_transient_failure() {
    let (probe, calls) = scripted(|n| if n < 1 { Err(unavailable()) } else { Ok("served".to_owned()) });
    let readiness = Readiness::new();
    let server = start_server(probe, readiness, &Metrics::new("test"), Duration::from_secs(5)).await;
    let channel = Endpoint::from_shared(server.uri()).expect("uri").connect_lazy();
    let client_args = ClientArgs { backoff_base: Duration::from_millis(5), ..args() };
    let resilient = ResilientChannel::new("probe", channel, &client_args);

    let answer = call(resilient.clone(), idempotent("hello".to_owned())).await.expect("the retry succeeds");
    assert_eq!(answer, "served");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    server.shutdown.cancel();
    server.task.await.expect("server task").expect("clean shutdown");
}

#[tokio::test]
async fn a_real_server_slower_than_the_deadline_gives_deadline_exceeded() {
    let probe = Probe::new(|_| async {
        std::future::pending::<()>().await;
        Ok(Response::new(String::new()))
    });
    let server =
        start_server(probe, Readiness::new(), &Metrics::new("test"), Duration::from_millis(100)).await;
    let channel = Endpoint::from_shared(server.uri()).expect("uri").connect_lazy();
    let resilient = ResilientChannel::new(
        "probe",
        channel,
        &ClientArgs { deadline: Duration::from_millis(200), ..args() },
    );

    let status = call(resilient, plain()).await.expect_err("times out");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    server.shutdown.cancel();
    let _ = server.task.await;
}

#[tokio::test]
async fn a_refused_connection_is_unavailable_and_opens_the_breaker() {
    // A port that was just free: nothing listens on it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let channel = Endpoint::from_shared(format!("http://{addr}")).expect("uri").connect_lazy();
    let resilient = ResilientChannel::new("probe", channel, &ClientArgs { max_retries: 0, ..args() });

    for _ in 0..3 {
        let status = call(resilient.clone(), plain()).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert_eq!(resilient.breaker().state(), BreakerState::Open);
    let status = call(resilient, plain()).await.expect_err("fails fast");
    assert!(status.message().contains("circuit open"), "{}", status.message());
}
