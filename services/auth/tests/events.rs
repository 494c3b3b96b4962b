//! `UserRegistered` goes through the platform outbox in the transaction
//! that inserts the user: rolled back, neither exists; committed, both do.

mod common;

use commerce_auth::store::{self, NewUser};
use commerce_proto::events::EventPayload;
use commerce_proto::events::v1::{UserErased, UserRegistered, UserRole};
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

#[tokio::test]
async fn an_erasure_deletes_the_user_and_their_tokens_and_writes_user_erased_in_one_transaction()
-> anyhow::Result<()> {
    let db = TestDatabase::create("auth", &commerce_auth::MIGRATOR).await?;
    let user = store::create_user(&db.pool, new_user("leaving@example.com")).await?;
    let stays = store::create_user(&db.pool, new_user("staying@example.com")).await?;
    for (owner, hash) in [(user.id, b"one".as_slice()), (stays.id, b"two".as_slice())] {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, token_hash, user_id, family_id, expires_at) \
             VALUES (gen_random_uuid(), $1, $2, gen_random_uuid(), now() + interval '1 day')",
        )
        .bind(hash)
        .bind(owner)
        .execute(&db.pool)
        .await?;
    }

    store::erase_user(&db.pool, user.id).await?;
    let users: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM users").fetch_all(&db.pool).await?;
    assert_eq!(users, vec![stays.id], "only the erased user is gone");
    let tokens: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT user_id FROM refresh_tokens").fetch_all(&db.pool).await?;
    assert_eq!(tokens, vec![stays.id], "the erased user's refresh tokens went with them");
    let rows = outbox(&db.pool).await?;
    let erased = rows.iter().find(|row| row.event_type == UserErased::TYPE).expect("a UserErased row");
    assert_eq!((erased.topic.as_str(), erased.key.clone()), (UserErased::TOPIC.name(), user.id.to_string()));
    assert_eq!(UserErased::decode(erased.payload.as_slice())?.user_id, user.id.to_string());

    let again = store::erase_user(&db.pool, user.id).await;
    assert!(matches!(again, Err(commerce_auth::Error::UserNotFound(id)) if id == user.id), "{again:?}");
    db.drop_database().await
}

#[tokio::test]
async fn the_last_active_administrator_cannot_erase_their_account() -> anyhow::Result<()> {
    let db = TestDatabase::create("auth", &commerce_auth::MIGRATOR).await?;
    let admin =
        store::create_user(&db.pool, NewUser { role: Role::Admin, ..new_user("admin@example.com") }).await?;
    let refused = store::erase_user(&db.pool, admin.id).await;
    assert!(matches!(refused, Err(commerce_auth::Error::LastAdmin(id)) if id == admin.id), "{refused:?}");
    let events: Vec<String> = outbox(&db.pool).await?.into_iter().map(|row| row.event_type).collect();
    assert_eq!(events, vec![UserRegistered::TYPE.to_owned()], "nothing was erased");

    let second =
        store::create_user(&db.pool, NewUser { role: Role::Admin, ..new_user("second@example.com") }).await?;
    store::erase_user(&db.pool, admin.id).await?;
    let users: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM users").fetch_all(&db.pool).await?;
    assert_eq!(users, vec![second.id], "with another administrator, the first may leave");
    db.drop_database().await
}
