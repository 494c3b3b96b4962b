//! Profiles and addresses in Postgres. Every change to one user's address
//! book first locks their profile row ([`lock_profile`]), so that the
//! count limit and the one default hold when requests race.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::Error;
use crate::domain::{PostalAddress, ProfileFields};

/// A stored profile.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Profile {
    pub user_id: String,
    pub display_name: String,
    pub phone: String,
    pub currency: String,
    pub marketing_consent: bool,
    pub updated_at: Option<DateTime<Utc>>,
}

/// A stored address.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Address {
    pub id: Uuid,
    pub user_id: String,
    pub label: String,
    pub recipient_name: String,
    pub line1: String,
    pub line2: String,
    pub city: String,
    pub region: String,
    pub postal_code: String,
    pub country_code: String,
    pub phone: String,
    pub is_default: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Address {
    pub fn postal(&self) -> PostalAddress {
        PostalAddress {
            recipient_name: self.recipient_name.clone(),
            line1: self.line1.clone(),
            line2: self.line2.clone(),
            city: self.city.clone(),
            region: self.region.clone(),
            postal_code: self.postal_code.clone(),
            country_code: self.country_code.clone(),
            phone: self.phone.clone(),
        }
    }
}

const ADDRESS_COLUMNS: &str = "id, user_id, label, recipient_name, line1, line2, city, region, postal_code, \
     country_code, phone, is_default, created_at, updated_at";
/// The default first, then the newest.
const ADDRESS_ORDER: &str = "ORDER BY is_default DESC, created_at DESC, id";

/// Creates the profile of a newly registered user, unless one exists
/// (a user may write theirs before the event arrives).
pub async fn create_from_registration(
    conn: &mut PgConnection,
    user_id: &str,
    display_name: &str,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO profiles (user_id, display_name) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(display_name)
    .execute(conn)
    .await
    .map_err(Error::Write)?;
    Ok(())
}

/// Deletes the user's profile and address book; whether there was a
/// profile.
pub async fn erase(conn: &mut PgConnection, user_id: &str) -> Result<bool, Error> {
    sqlx::query("DELETE FROM addresses WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await
        .map_err(Error::Write)?;
    let deleted = sqlx::query("DELETE FROM profiles WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await
        .map_err(Error::Write)?;
    Ok(deleted.rows_affected() == 1)
}

/// The user's profile, if the service has one.
pub async fn find_profile(conn: &mut PgConnection, user_id: &str) -> Result<Option<Profile>, Error> {
    sqlx::query_as(
        "SELECT user_id, display_name, phone, currency, marketing_consent, updated_at \
         FROM profiles WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await
    .map_err(Error::Read)
}

/// Writes the profile's fields, creating it if needed.
pub async fn upsert_profile(
    conn: &mut PgConnection,
    user_id: &str,
    fields: &ProfileFields,
) -> Result<Profile, Error> {
    sqlx::query_as(
        "INSERT INTO profiles (user_id, display_name, phone, currency, marketing_consent, updated_at) \
         VALUES ($1, $2, $3, $4, $5, now()) \
         ON CONFLICT (user_id) DO UPDATE SET display_name = $2, phone = $3, currency = $4, \
           marketing_consent = $5, updated_at = now() \
         RETURNING user_id, display_name, phone, currency, marketing_consent, updated_at",
    )
    .bind(user_id)
    .bind(&fields.display_name)
    .bind(&fields.phone)
    .bind(&fields.currency)
    .bind(fields.marketing_consent)
    .fetch_one(conn)
    .await
    .map_err(Error::Write)
}

/// Locks the user's profile row, creating an empty one if needed; call it
/// first in every transaction that changes the user's addresses.
pub async fn lock_profile(conn: &mut PgConnection, user_id: &str) -> Result<(), Error> {
    sqlx::query("INSERT INTO profiles (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING")
        .bind(user_id)
        .execute(&mut *conn)
        .await
        .map_err(Error::Write)?;
    sqlx::query("SELECT 1 FROM profiles WHERE user_id = $1 FOR UPDATE")
        .bind(user_id)
        .execute(conn)
        .await
        .map_err(Error::Write)?;
    Ok(())
}

/// The user's addresses, the default first.
pub async fn list_addresses(conn: &mut PgConnection, user_id: &str) -> Result<Vec<Address>, Error> {
    sqlx::query_as(&format!("SELECT {ADDRESS_COLUMNS} FROM addresses WHERE user_id = $1 {ADDRESS_ORDER}"))
        .bind(user_id)
        .fetch_all(conn)
        .await
        .map_err(Error::Read)
}

/// The user's default address.
pub async fn default_address(conn: &mut PgConnection, user_id: &str) -> Result<Option<Address>, Error> {
    sqlx::query_as(&format!("SELECT {ADDRESS_COLUMNS} FROM addresses WHERE user_id = $1 AND is_default"))
        .bind(user_id)
        .fetch_optional(conn)
        .await
        .map_err(Error::Read)
}

/// How many addresses the user has.
pub async fn count_addresses(conn: &mut PgConnection, user_id: &str) -> Result<i64, Error> {
    sqlx::query_scalar("SELECT count(*) FROM addresses WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(conn)
        .await
        .map_err(Error::Read)
}

/// Clears the user's default (before another address takes it).
pub async fn clear_default(conn: &mut PgConnection, user_id: &str) -> Result<(), Error> {
    sqlx::query(
        "UPDATE addresses SET is_default = FALSE, updated_at = now() WHERE user_id = $1 AND is_default",
    )
    .bind(user_id)
    .execute(conn)
    .await
    .map_err(Error::Write)?;
    Ok(())
}

/// Binds the eight fields of `address`, in the order of the common proto.
fn bind_postal<'q>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, Address, sqlx::postgres::PgArguments>,
    address: &'q PostalAddress,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, Address, sqlx::postgres::PgArguments> {
    query
        .bind(&address.recipient_name)
        .bind(&address.line1)
        .bind(&address.line2)
        .bind(&address.city)
        .bind(&address.region)
        .bind(&address.postal_code)
        .bind(&address.country_code)
        .bind(&address.phone)
}

/// Inserts an address.
pub async fn insert_address(
    conn: &mut PgConnection,
    user_id: &str,
    label: &str,
    address: &PostalAddress,
    is_default: bool,
) -> Result<Address, Error> {
    let sql = format!(
        "INSERT INTO addresses (id, user_id, label, is_default, recipient_name, line1, line2, city, region, \
           postal_code, country_code, phone) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {ADDRESS_COLUMNS}"
    );
    let query = sqlx::query_as(&sql).bind(Uuid::now_v7()).bind(user_id).bind(label).bind(is_default);
    bind_postal(query, address).fetch_one(conn).await.map_err(Error::Write)
}

/// The user's address `id`.
pub async fn find_address(
    conn: &mut PgConnection,
    user_id: &str,
    id: Uuid,
) -> Result<Option<Address>, Error> {
    sqlx::query_as(&format!("SELECT {ADDRESS_COLUMNS} FROM addresses WHERE user_id = $1 AND id = $2"))
        .bind(user_id)
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(Error::Read)
}

/// Replaces an address's fields.
pub async fn update_address(
    conn: &mut PgConnection,
    id: Uuid,
    label: &str,
    address: &PostalAddress,
    is_default: bool,
) -> Result<Address, Error> {
    let sql = format!(
        "UPDATE addresses SET label = $2, is_default = $3, recipient_name = $4, line1 = $5, line2 = $6, \
           city = $7, region = $8, postal_code = $9, country_code = $10, phone = $11, updated_at = now() \
         WHERE id = $1 RETURNING {ADDRESS_COLUMNS}"
    );
    let query = sqlx::query_as(&sql).bind(id).bind(label).bind(is_default);
    bind_postal(query, address).fetch_one(conn).await.map_err(Error::Write)
}

/// Deletes an address; whether it was the default.
pub async fn delete_address(conn: &mut PgConnection, user_id: &str, id: Uuid) -> Result<Option<bool>, Error> {
    sqlx::query_scalar("DELETE FROM addresses WHERE user_id = $1 AND id = $2 RETURNING is_default")
        .bind(user_id)
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(Error::Write)
}

/// Makes the user's newest address the default (after the default was
/// deleted); nothing if the book is empty.
pub async fn promote_newest(conn: &mut PgConnection, user_id: &str) -> Result<(), Error> {
    sqlx::query(
        "UPDATE addresses SET is_default = TRUE, updated_at = now() WHERE id = \
         (SELECT id FROM addresses WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1)",
    )
    .bind(user_id)
    .execute(conn)
    .await
    .map_err(Error::Write)?;
    Ok(())
}
