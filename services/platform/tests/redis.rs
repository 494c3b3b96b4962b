//! Connecting to Redis: against the real server the project's scripts run
//! on loopback (`bash e2e/scripts/infra.sh up redis`), and against a closed
//! port for the waiting path.

use std::time::Duration;

use commerce_platform::readiness::{CheckState, Readiness};
use commerce_platform::redis::{self, READINESS_CHECK, RedisArgs, RedisError};
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(10);
/// Where `e2e/scripts/infra.sh up redis` serves, unless overridden.
const DEFAULT_TEST_REDIS: &str = "redis://127.0.0.1:56379";

fn redis_url() -> String {
    std::env::var("COMMERCE_REDIS_URL").unwrap_or_else(|_| DEFAULT_TEST_REDIS.to_owned())
}

/// Fails the test, saying how to fix it, when no Redis listens.
async fn require_redis(url: &str) {
    let client = ::redis::Client::open(url).expect("a valid COMMERCE_REDIS_URL");
    let addr = client.get_connection_info().addr.to_string();
    let reachable = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&addr)).await;
    assert!(
        matches!(reachable, Ok(Ok(_))),
        "Redis is not reachable at {addr} (COMMERCE_REDIS_URL={url}); start it with `bash e2e/scripts/infra.sh up redis`"
    );
}

fn check_state(readiness: &Readiness) -> Option<CheckState> {
    readiness.snapshot().into_iter().find(|(name, _)| name == READINESS_CHECK).map(|(_, state)| state)
}

#[tokio::test]
async fn connecting_to_a_running_redis_marks_it_ready_and_commands_work() {
    let url = redis_url();
    require_redis(&url).await;
    let readiness = Readiness::new();
    let shutdown = CancellationToken::new();

    let mut manager =
        tokio::time::timeout(PATIENCE, redis::connect(&RedisArgs::new(url), &readiness, &shutdown))
            .await
            .expect("connects in time")
            .expect("connects");
    assert_eq!(check_state(&readiness), Some(CheckState::Ready));

    let key = format!("commerce-platform-test:{}", uuid::Uuid::new_v4());
    let () = ::redis::cmd("SET")
        .arg(&key)
        .arg("value")
        .arg("EX")
        .arg(60)
        .query_async(&mut manager)
        .await
        .expect("SET");
    let value: String = ::redis::cmd("GET").arg(&key).query_async(&mut manager).await.expect("GET");
    assert_eq!(value, "value");
    let _: i64 = ::redis::cmd("DEL").arg(&key).query_async(&mut manager).await.expect("DEL");

    shutdown.cancel();
}

#[tokio::test]
async fn an_unreachable_redis_is_shown_in_readiness_until_shutdown() {
    // A port that was just free: nothing listens on it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let readiness = Readiness::new();
    let shutdown = CancellationToken::new();
    let args = RedisArgs::new(format!("redis://{addr}"));

    let connecting = {
        let (readiness, shutdown) = (readiness.clone(), shutdown.clone());
        tokio::spawn(async move { redis::connect(&args, &readiness, &shutdown).await })
    };
    let waited = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(CheckState::NotReady(reason)) = check_state(&readiness)
                && reason.contains("cannot reach Redis")
            {
                return reason;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let reason = waited.expect("the failed attempt shows in readiness");
    assert!(reason.contains(&addr.to_string()), "{reason}");
    assert!(!connecting.is_finished(), "connect keeps retrying rather than failing");

    shutdown.cancel();
    let result = tokio::time::timeout(PATIENCE, connecting).await.expect("stops on shutdown").expect("task");
    match result {
        Err(RedisError::Connect { source: Some(_), .. }) => {}
        Err(other) => panic!("expected a connect error with its cause, got {other:?}"),
        Ok(_) => panic!("nothing listens on {addr}, yet connect succeeded"),
    }
}
