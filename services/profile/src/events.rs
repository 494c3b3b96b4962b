//! The consumer's handler: a registration creates the user's profile with
//! the name they registered with; an erasure deletes it and the address
//! book.

use commerce_platform::events::{HandlerError, IncomingEvent};
use commerce_proto::events::v1 as ev;
use sqlx::{Postgres, Transaction};

use crate::store;

/// Handles the Users topic's registrations and erasures; other types are
/// skipped.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProfileEventHandler;

commerce_platform::event_handler!(ProfileEventHandler {
    ev::UserRegistered => user_registered,
    ev::UserErased => user_erased,
});

impl ProfileEventHandler {
    async fn user_registered(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::UserRegistered,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        if e.user_id.is_empty() {
            return Err(HandlerError::permanent(crate::Error::InvalidRequest {
                field: "user_id",
                problem: "UserRegistered without a user id",
            }));
        }
        store::create_from_registration(tx, &e.user_id, &e.display_name)
            .await
            .map_err(HandlerError::retryable)
    }

    async fn user_erased(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::UserErased,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        if e.user_id.is_empty() {
            return Err(HandlerError::permanent(crate::Error::InvalidRequest {
                field: "user_id",
                problem: "UserErased without a user id",
            }));
        }
        let had_profile = store::erase(tx, &e.user_id).await.map_err(HandlerError::retryable)?;
        tracing::info!(user_id = %e.user_id, had_profile, "an erased user's profile and addresses were deleted");
        Ok(())
    }
}
