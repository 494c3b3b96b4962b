//! Users as the API shows them ([`user_to_proto`], no credentials) and
//! their administration (`ListUsers`, `SetUserRole`): the requests checked
//! and turned into [`store`] calls. Who may call them is the gateway's
//! check (`/api/admin/users` needs the admin role); here every request is
//! an administrator's.

use chrono::{DateTime, Utc};
use commerce_proto::auth::v1 as pb;
use commerce_proto::time::timestamp;
use commerce_token::Role;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Error;
use crate::domain::InvalidInput;
use crate::store::{self, RoleChange, UserFilter, UserRow};

/// Users in a page when the request names no size.
const DEFAULT_PAGE_SIZE: i64 = 20;
/// Most users in one page.
const MAX_PAGE_SIZE: i64 = 100;
/// Longest search text, in characters.
const MAX_QUERY_CHARS: usize = 100;

/// One page of the users matching the request.
pub async fn list(pool: &PgPool, request: pb::ListUsersRequest) -> Result<pb::ListUsersResponse, Error> {
    let text = request.query.trim();
    if text.chars().count() > MAX_QUERY_CHARS {
        return Err(invalid(format!("query is longer than {MAX_QUERY_CHARS} characters")));
    }
    let role = match pb::Role::try_from(request.role) {
        Ok(pb::Role::Unspecified) => None,
        Ok(role) => Some(role_from_proto(role)),
        Err(_) => return Err(invalid(format!("role {} is not a known role", request.role))),
    };
    let filter = UserFilter { text: (!text.is_empty()).then(|| text.to_owned()), role };
    let page_size = match i64::from(request.page_size) {
        size if size <= 0 => DEFAULT_PAGE_SIZE,
        size => size.min(MAX_PAGE_SIZE),
    };
    let after = decode_page_token(&request.page_token)?;
    let page = store::list_users(pool, &filter, page_size, after).await?;
    Ok(pb::ListUsersResponse {
        users: page.users.iter().map(user_to_proto).collect(),
        next_page_token: page.next.map(encode_page_token).unwrap_or_default(),
        total_size: page.total,
    })
}

/// Gives a user another role; the user as it is now.
pub async fn set_role(
    pool: &PgPool,
    request: pb::SetUserRoleRequest,
) -> Result<pb::SetUserRoleResponse, Error> {
    let id = Uuid::parse_str(&request.user_id)
        .map_err(|_| invalid(format!("user_id {:?} is not a UUID", request.user_id)))?;
    let role = match pb::Role::try_from(request.role) {
        Ok(pb::Role::Unspecified) | Err(_) => {
            return Err(invalid("role must be customer, admin or courier".to_owned()));
        }
        Ok(role) => role_from_proto(role),
    };
    let changed_by = match request.changed_by.as_str() {
        "" => None,
        admin => {
            Some(Uuid::parse_str(admin).map_err(|_| invalid(format!("changed_by {admin:?} is not a UUID")))?)
        }
    };
    match store::set_role(pool, id, role, changed_by).await? {
        RoleChange::Changed { user, from } => {
            if from != role {
                tracing::info!(
                    user_id = %user.id, from = from.as_str(), to = role.as_str(), changed_by = %request.changed_by,
                    "a user's role changed"
                );
            }
            Ok(pb::SetUserRoleResponse { user: Some(user_to_proto(&user)) })
        }
        RoleChange::NoSuchUser => Err(Error::UserNotFound(id)),
        RoleChange::LastAdmin => Err(Error::LastAdmin(id)),
    }
}

/// The proto view of a user (no credentials).
pub fn user_to_proto(user: &UserRow) -> pb::User {
    pb::User {
        id: user.id.to_string(),
        email: user.email.clone(),
        display_name: user.display_name.clone(),
        roles: vec![role_to_proto(user.role()) as i32],
        created_at: Some(timestamp(user.created_at)),
        active: user.active,
    }
}

/// The proto role of a stored role.
pub fn role_to_proto(role: Role) -> pb::Role {
    match role {
        Role::Customer => pb::Role::Customer,
        Role::Admin => pb::Role::Admin,
        Role::Courier => pb::Role::Courier,
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidInput(InvalidInput(message))
}

fn role_from_proto(role: pb::Role) -> Role {
    match role {
        pb::Role::Admin => Role::Admin,
        pb::Role::Courier => Role::Courier,
        pb::Role::Customer | pb::Role::Unspecified => Role::Customer,
    }
}

/// Page tokens are the keyset cursor `<micros>_<uuid>` of the last user.
fn encode_page_token(cursor: (DateTime<Utc>, Uuid)) -> String {
    format!("{}_{}", cursor.0.timestamp_micros(), cursor.1.simple())
}

fn decode_page_token(token: &str) -> Result<Option<(DateTime<Utc>, Uuid)>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let cursor = token.split_once('_').and_then(|(micros, id)| {
        let time = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        Some((time, Uuid::parse_str(id).ok()?))
    });
    cursor.map(Some).ok_or_else(|| invalid("page_token is not a token this server issued".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_round_trips_and_a_foreign_one_is_refused() {
        let cursor = (DateTime::from_timestamp_micros(1_796_466_657_123_456).unwrap(), Uuid::now_v7());
        assert_eq!(decode_page_token(&encode_page_token(cursor)).unwrap(), Some(cursor));
        assert_eq!(decode_page_token("").unwrap(), None);
        for foreign in ["abc", "12_notauuid", "x_0190a8a0-0000-7000-8000-000000000000", "_"] {
            assert!(
                matches!(decode_page_token(foreign), Err(Error::InvalidInput(_))),
                "{foreign} was accepted"
            );
        }
    }
}
