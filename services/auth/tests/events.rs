//! `UserRegistered` goes through the platform outbox in the transaction
//! that inserts the user: rolled back, neither exists; committed, both do.

mod common;

use commerce_auth::store::{self, NewUser};
use commerce_proto::events::EventPayload;
use commerce_proto::events::v1::{UserRegistered, UserRole};
use commerce_token::Role;
use common::{TestDatabase, outbox};
use prost::Message;

fn new_user(email: &str) -> NewUser {
    NewUser {
        email: email.to_owned(),
        display_name: "Test".to_owned(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".to_owned(),
        role: Role::Customer,
    }
}

#[tokio::test]
async fn a_rolled_back_registration_leaves_neither_user_nor_event() -> anyhow::Result<()> {
    let db = TestDatabase::create("auth", &commerce_auth::MIGRATOR).await?;
    let mut tx = db.pool.begin().await?;
    store::insert_user(&mut tx, &new_user("rolled@example.com")).await?;
    tx.rollback().await?;
    assert!(outbox(&db.pool).await?.is_empty());
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&db.pool).await?;
    assert_eq!(users, 0);
    db.drop_database().await
}

#[tokio::test]
async fn a_committed_registration_writes_one_user_registered_row_keyed_by_user() -> anyhow::Result<()> {
    let db = TestDatabase::create("auth", &commerce_auth::MIGRATOR).await?;
    let user = store::create_user(&db.pool, new_user("committed@example.com")).await?;
    let rows = outbox(&db.pool).await?;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].event_type, UserRegistered::TYPE);
    assert_eq!(rows[0].topic, UserRegistered::TOPIC.name());
    assert_eq!(rows[0].key, user.id.to_string());
    let event = UserRegistered::decode(rows[0].payload.as_slice())?;
    assert_eq!(event.email, "committed@example.com");
    assert_eq!(event.roles, vec![UserRole::Customer as i32]);
    assert!(event.occurred_at.is_some());
    db.drop_database().await
}
