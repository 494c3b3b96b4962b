//! The consumer's handler: a registration creates the user's profile with
//! the name they registered with.

use commerce_platform::events::{HandlerError, IncomingEvent};
use commerce_proto::events::v1 as ev;
use sqlx::{Postgres, Transaction};

use crate::store;

/// Handles the Users topic's registrations; other types are skipped.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProfileEventHandler;

commerce_platform::event_handler!(ProfileEventHandler {
    ev::UserRegistered => user_registered,
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
}
