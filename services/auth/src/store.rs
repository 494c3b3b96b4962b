//! The auth database: users, refresh tokens and signing keys, with
//! runtime-checked sqlx queries. `UserRegistered` is written to the platform
//! outbox in the same transaction as the user.

use chrono::{DateTime, Utc};
use commerce_platform::events::enqueue;
use commerce_proto::events::v1 as events;
use commerce_proto::time::timestamp;
use sqlx::postgres::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{Error, domain};
use commerce_token::Role;

/// Postgres' code for a unique violation.
const UNIQUE_VIOLATION: &str = "23505";
/// Advisory lock (per database) held while signing keys are created or
/// rotated, so that replicas starting together create one key, not one
/// each. ASCII "authkeys".
const KEYS_LOCK_KEY: i64 = 0x6175_7468_6b65_7973;

fn database(action: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Database { action, source }
}

/// A user as stored, credentials included; never leaves the crate as is.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub password_hash: String,
    pub role: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

impl UserRow {
    /// The stored role; the CHECK constraint admits only known names.
    pub fn role(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::Customer)
    }
}

/// A user to create; every field already validated and the password hashed.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    pub display_name: String,
    pub password_hash: String,
    pub role: Role,
}

/// Inserts a user and its `UserRegistered` event in one transaction.
/// [`Error::EmailTaken`] if the email (in any case) is registered.
pub async fn create_user(pool: &PgPool, user: NewUser) -> Result<UserRow, Error> {
    let mut tx = pool.begin().await.map_err(database("begin a transaction"))?;
    let row = insert_user(&mut tx, &user).await?;
    tx.commit().await.map_err(database("commit a new user"))?;
    Ok(row)
}

/// Inserts a user and enqueues `UserRegistered` on `conn` (inside the
/// caller's transaction; exposed so that tests can roll it back).
pub async fn insert_user(conn: &mut PgConnection, user: &NewUser) -> Result<UserRow, Error> {
    let inserted = sqlx::query_as::<_, UserRow>(
        "INSERT INTO users (id, email, display_name, password_hash, role) VALUES ($1, $2, $3, $4, $5) \
         RETURNING id, email, display_name, password_hash, role, active, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(&user.email)
    .bind(&user.display_name)
    .bind(&user.password_hash)
    .bind(user.role.as_str())
    .fetch_one(&mut *conn)
    .await;
    let row = match inserted {
        Ok(row) => row,
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            return Err(Error::EmailTaken { email: user.email.clone() });
        }
        Err(source) => return Err(Error::Database { action: "insert a user", source }),
    };
    let event = events::UserRegistered {
        user_id: row.id.to_string(),
        email: row.email.clone(),
        display_name: row.display_name.clone(),
        roles: vec![event_role(row.role()) as i32],
        occurred_at: Some(timestamp(row.created_at)),
    };
    enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
    Ok(row)
}

fn event_role(role: Role) -> events::UserRole {
    match role {
        Role::Customer => events::UserRole::Customer,
        Role::Admin => events::UserRole::Admin,
        Role::Courier => events::UserRole::Courier,
    }
}

const USER_COLUMNS: &str = "id, email, display_name, password_hash, role, active, created_at";

/// The user with this (normalized) email, if any.
pub async fn find_user_by_email(pool: &PgPool, email: &str) -> Result<Option<UserRow>, Error> {
    sqlx::query_as::<_, UserRow>(&format!("SELECT {USER_COLUMNS} FROM users WHERE lower(email) = lower($1)"))
        .bind(email)
        .fetch_optional(pool)
        .await
        .map_err(database("find a user by email"))
}

/// Counts a sign-in attempt to user `id` before its password is checked
/// (see [`domain::decide_login`]): under the row's lock, so that parallel
/// attempts are counted one after another. `None` when the user is gone.
pub async fn count_login_attempt(pool: &PgPool, id: Uuid) -> Result<Option<domain::LoginAttempt>, Error> {
    let mut tx = pool.begin().await.map_err(database("begin counting a sign-in"))?;
    let row: Option<(i32, Option<DateTime<Utc>>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT login_failures, login_paused_until, now() FROM users WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(database("read the sign-in throttle"))?;
    let Some((failures, paused_until, now)) = row else {
        return Ok(None);
    };
    let stored = domain::LoginThrottle { failures: u32::try_from(failures).unwrap_or(0), paused_until };
    let attempt = domain::decide_login(stored, now);
    if let domain::LoginAttempt::Check { counted } = attempt {
        sqlx::query("UPDATE users SET login_failures = $2, login_paused_until = $3 WHERE id = $1")
            .bind(id)
            .bind(i32::try_from(counted.failures).unwrap_or(i32::MAX))
            .bind(counted.paused_until)
            .execute(&mut *tx)
            .await
            .map_err(database("count a sign-in attempt"))?;
    }
    tx.commit().await.map_err(database("commit a sign-in attempt"))?;
    Ok(Some(attempt))
}

/// What administrators filter users by.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// Text within email or display name, in any case.
    pub text: Option<String>,
    pub role: Option<Role>,
}

/// A page of users, newest first.
#[derive(Debug)]
pub struct UserPage {
    pub users: Vec<UserRow>,
    /// Keyset cursor of the last user, when more follow.
    pub next: Option<(DateTime<Utc>, Uuid)>,
    /// Users matching the filter, over every page.
    pub total: i64,
}

/// `text` as a LIKE pattern that matches it literally anywhere.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for character in text.chars() {
        if matches!(character, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(character);
    }
    pattern.push('%');
    pattern
}

/// One page of the users matching `filter`, newest first, after the keyset
/// cursor `after`, with the count of every match.
pub async fn list_users(
    pool: &PgPool,
    filter: &UserFilter,
    page_size: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<UserPage, Error> {
    let pattern = filter.text.as_deref().map(contains_pattern);
    let role = filter.role.map(Role::as_str);
    let matching = "($1::text IS NULL OR email ILIKE $1 OR display_name ILIKE $1) \
                    AND ($2::text IS NULL OR role = $2)";
    let mut tx = pool.begin().await.map_err(database("begin listing users"))?;
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM users WHERE {matching}"))
        .bind(&pattern)
        .bind(role)
        .fetch_one(&mut *tx)
        .await
        .map_err(database("count users"))?;
    let (after_time, after_id) = after.map_or((None, None), |(time, id)| (Some(time), Some(id)));
    let mut users: Vec<UserRow> = sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE {matching} \
         AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
         ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    .bind(&pattern)
    .bind(role)
    .bind(after_time)
    .bind(after_id)
    .bind(page_size + 1)
    .fetch_all(&mut *tx)
    .await
    .map_err(database("list users"))?;
    tx.commit().await.map_err(database("end listing users"))?;
    let page = usize::try_from(page_size).unwrap_or(usize::MAX);
    let next = if users.len() > page {
        users.truncate(page);
        users.last().map(|user| (user.created_at, user.id))
    } else {
        None
    };
    Ok(UserPage { users, next, total })
}

/// What a role change did.
#[derive(Debug)]
pub enum RoleChange {
    /// The user, with the new role (unchanged when it already had it).
    Changed {
        user: UserRow,
        from: Role,
    },
    NoSuchUser,
    /// The user is the last active administrator and would lose the role.
    LastAdmin,
}

/// Gives user `id` the role `role`, unless that would leave no active
/// administrator. Every active administrator's row is locked first, so two
/// administrators demoting each other at once cannot both succeed: the
/// second waits, then sees the first change.
/// A change is committed with its `UserRoleChanged` event (naming
/// `changed_by`, the administrator) in one transaction.
pub async fn set_role(
    pool: &PgPool,
    id: Uuid,
    role: Role,
    changed_by: Option<Uuid>,
) -> Result<RoleChange, Error> {
    let mut tx = pool.begin().await.map_err(database("begin a role change"))?;
    let admins: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM users WHERE role = 'admin' AND active ORDER BY id FOR UPDATE")
            .fetch_all(&mut *tx)
            .await
            .map_err(database("lock the administrators"))?;
    let Some(user) =
        sqlx::query_as::<_, UserRow>(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(database("read a user for a role change"))?
    else {
        return Ok(RoleChange::NoSuchUser);
    };
    let from = user.role();
    if from == role {
        return Ok(RoleChange::Changed { user, from });
    }
    // The role changes, so an administrator among the active ones is
    // losing it: refused if none other is left.
    if admins == [id] {
        return Ok(RoleChange::LastAdmin);
    }
    let user = sqlx::query_as::<_, UserRow>(&format!(
        "UPDATE users SET role = $2 WHERE id = $1 RETURNING {USER_COLUMNS}"
    ))
    .bind(id)
    .bind(role.as_str())
    .fetch_one(&mut *tx)
    .await
    .map_err(database("change a user's role"))?;
    let event = events::UserRoleChanged {
        user_id: user.id.to_string(),
        previous_role: event_role(from) as i32,
        role: event_role(role) as i32,
        changed_by: changed_by.map(|admin| admin.to_string()).unwrap_or_default(),
        occurred_at: Some(timestamp(now(&mut *tx).await?)),
    };
    enqueue(&mut tx, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
    tx.commit().await.map_err(database("commit a role change"))?;
    Ok(RoleChange::Changed { user, from })
}

/// Deletes user `id` with their refresh tokens and publishes
/// `UserErased`, in one transaction; when it was. Locks the active
/// administrators as [`set_role`] does, so that two administrators erasing
/// themselves at once cannot leave the shop without one.
pub async fn erase_user(pool: &PgPool, id: Uuid) -> Result<DateTime<Utc>, Error> {
    let mut tx = pool.begin().await.map_err(database("begin an erasure"))?;
    let admins: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM users WHERE role = 'admin' AND active ORDER BY id FOR UPDATE")
            .fetch_all(&mut *tx)
            .await
            .map_err(database("lock the administrators"))?;
    if admins == [id] {
        return Err(Error::LastAdmin(id));
    }
    sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(database("delete an erased user's refresh tokens"))?;
    let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(database("delete an erased user"))?;
    if deleted.rows_affected() == 0 {
        return Err(Error::UserNotFound(id));
    }
    let erased_at = now(&mut *tx).await?;
    let event = events::UserErased { user_id: id.to_string(), occurred_at: Some(timestamp(erased_at)) };
    enqueue(&mut tx, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
    tx.commit().await.map_err(database("commit an erasure"))?;
    Ok(erased_at)
}

/// Replaces user `id`'s password hash `old` with `new` (the same password
/// hashed with other parameters); false when the stored hash is no longer
/// `old`.
pub async fn replace_password_hash(pool: &PgPool, id: Uuid, old: &str, new: &str) -> Result<bool, Error> {
    let replaced = sqlx::query("UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2")
        .bind(id)
        .bind(old)
        .bind(new)
        .execute(pool)
        .await
        .map_err(database("store a password hashed again"))?;
    Ok(replaced.rows_affected() == 1)
}

/// Clears user `id`'s sign-in throttle after a correct password.
pub async fn reset_login_throttle(pool: &PgPool, id: Uuid) -> Result<(), Error> {
    sqlx::query(
        "UPDATE users SET login_failures = 0, login_paused_until = NULL WHERE id = $1 AND login_failures > 0",
    )
    .bind(id)
    .execute(pool)
    .await
    .map_err(database("reset the sign-in throttle"))?;
    Ok(())
}

/// The user with this id, if any.
pub async fn find_user(conn: &mut PgConnection, id: Uuid) -> Result<Option<UserRow>, Error> {
    sqlx::query_as::<_, UserRow>(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(database("find a user by id"))
}

/// A refresh token to store (its hash, never the token).
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    pub id: Uuid,
    pub token_hash: Vec<u8>,
    pub user_id: Uuid,
    pub family_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

pub async fn insert_refresh_token(conn: &mut PgConnection, token: &NewRefreshToken) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO refresh_tokens (id, token_hash, user_id, family_id, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token.id)
    .bind(&token.token_hash)
    .bind(token.user_id)
    .bind(token.family_id)
    .bind(token.expires_at)
    .execute(conn)
    .await
    .map_err(database("store a refresh token"))?;
    Ok(())
}

/// A stored refresh token, locked for the rest of the transaction.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefreshTokenRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub family_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Finds and locks (`FOR UPDATE`) the token with this hash, so that two
/// concurrent refreshes of one token serialize: the second sees it revoked.
pub async fn lock_refresh_token(
    conn: &mut PgConnection,
    hash: &[u8],
) -> Result<Option<RefreshTokenRow>, Error> {
    sqlx::query_as::<_, RefreshTokenRow>(
        "SELECT id, user_id, family_id, expires_at, revoked_at FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(hash)
    .fetch_optional(conn)
    .await
    .map_err(database("lock a refresh token"))
}

/// Revokes one token on rotation, recording its successor.
pub async fn revoke_rotated(conn: &mut PgConnection, id: Uuid, replaced_by: Uuid) -> Result<(), Error> {
    sqlx::query("UPDATE refresh_tokens SET revoked_at = now(), replaced_by = $2 WHERE id = $1")
        .bind(id)
        .bind(replaced_by)
        .execute(conn)
        .await
        .map_err(database("revoke a rotated refresh token"))?;
    Ok(())
}

/// Revokes every still-valid token of a family; returns how many.
pub async fn revoke_family(conn: &mut PgConnection, family_id: Uuid) -> Result<u64, Error> {
    let done = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
    )
    .bind(family_id)
    .execute(conn)
    .await
    .map_err(database("revoke a refresh token family"))?;
    Ok(done.rows_affected())
}

/// Revokes the token with this hash if it is still valid (logout).
pub async fn revoke_by_hash(pool: &PgPool, hash: &[u8]) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash)
    .execute(pool)
    .await
    .map_err(database("revoke a refresh token"))?;
    Ok(done.rows_affected() > 0)
}

/// The database's clock, by which auth stamps and judges every time it
/// stores or signs (token lifetimes, key activation), so that an auth
/// process whose own clock is off issues tokens the gateways accept and
/// expires them on time (see `commerce_platform::db::database_now`).
pub async fn now<'c, E: sqlx::PgExecutor<'c>>(executor: E) -> Result<DateTime<Utc>, Error> {
    commerce_platform::db::database_now(executor).await.map_err(database("read the database's clock"))
}

/// Deletes refresh tokens that expired more than `grace` ago (they are
/// refused anyway; the grace keeps recent ones for audits); returns how
/// many.
pub async fn purge_expired_refresh_tokens(pool: &PgPool, grace: std::time::Duration) -> Result<u64, Error> {
    let grace = chrono::Duration::from_std(grace).unwrap_or_default();
    let done = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < now() - $1")
        .bind(grace)
        .execute(pool)
        .await
        .map_err(database("purge expired refresh tokens"))?;
    Ok(done.rows_affected())
}

/// A signing key as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SigningKeyRow {
    pub kid: String,
    pub private_key_pem: String,
    pub public_key: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub activates_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Every key that is not expired at `now`, newest activation first.
pub async fn published_keys(pool: &PgPool, now: DateTime<Utc>) -> Result<Vec<SigningKeyRow>, Error> {
    sqlx::query_as::<_, SigningKeyRow>(
        "SELECT kid, private_key_pem, public_key, created_at, activates_at, expires_at FROM signing_keys \
         WHERE expires_at IS NULL OR expires_at > $1 ORDER BY activates_at DESC, created_at DESC",
    )
    .bind(now)
    .fetch_all(pool)
    .await
    .map_err(database("read signing keys"))
}

/// Locks key maintenance for the rest of the transaction.
pub async fn lock_keys(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(KEYS_LOCK_KEY)
        .execute(conn)
        .await
        .map_err(database("lock signing keys"))?;
    Ok(())
}

/// Keys that still sign or may sign (no expiry yet), newest first.
pub async fn unexpired_signing_keys(conn: &mut PgConnection) -> Result<Vec<SigningKeyRow>, Error> {
    sqlx::query_as::<_, SigningKeyRow>(
        "SELECT kid, private_key_pem, public_key, created_at, activates_at, expires_at FROM signing_keys \
         WHERE expires_at IS NULL ORDER BY activates_at DESC, created_at DESC",
    )
    .fetch_all(conn)
    .await
    .map_err(database("read unexpired signing keys"))
}

/// Stores a key (or un-expires it if it is already known).
pub async fn upsert_key(
    conn: &mut PgConnection,
    kid: &str,
    private_key_pem: &str,
    public_key: &[u8],
    activates_at: DateTime<Utc>,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO signing_keys (kid, private_key_pem, public_key, activates_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (kid) DO UPDATE SET expires_at = NULL",
    )
    .bind(kid)
    .bind(private_key_pem)
    .bind(public_key)
    .bind(activates_at)
    .execute(conn)
    .await
    .map_err(database("store a signing key"))?;
    Ok(())
}

/// Stores a pre-published key that signs from `activates_at` (file mode's
/// next key), or un-expires it and moves its activation if it is already
/// known: the activation written last (the operator's) wins.
pub async fn upsert_key_activating(
    conn: &mut PgConnection,
    kid: &str,
    private_key_pem: &str,
    public_key: &[u8],
    activates_at: DateTime<Utc>,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO signing_keys (kid, private_key_pem, public_key, activates_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (kid) DO UPDATE SET expires_at = NULL, activates_at = EXCLUDED.activates_at",
    )
    .bind(kid)
    .bind(private_key_pem)
    .bind(public_key)
    .bind(activates_at)
    .execute(conn)
    .await
    .map_err(database("store a pre-published signing key"))?;
    Ok(())
}

/// Sets the expiry of one key, whatever it was: the key that signs until
/// a pre-published successor activates retires at a known time.
pub async fn set_key_expiry(
    conn: &mut PgConnection,
    kid: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), Error> {
    sqlx::query("UPDATE signing_keys SET expires_at = $2 WHERE kid = $1")
        .bind(kid)
        .bind(expires_at)
        .execute(conn)
        .await
        .map_err(database("set the expiry of a signing key"))?;
    Ok(())
}

/// Sets an expiry on every unexpired key but those in `keep`.
pub async fn expire_keys_except(
    conn: &mut PgConnection,
    keep: &[&str],
    expires_at: DateTime<Utc>,
) -> Result<(), Error> {
    sqlx::query("UPDATE signing_keys SET expires_at = $2 WHERE kid <> ALL($1) AND expires_at IS NULL")
        .bind(keep)
        .bind(expires_at)
        .execute(conn)
        .await
        .map_err(database("retire signing keys"))?;
    Ok(())
}
