//! What shipping publishes (ShipmentCreated, ShipmentStatusChanged,
//! ShipmentDelivered, ShipmentHalted; through the outbox) and consumes
//! (OrderConfirmed creates the shipment, OrderCancelled halts it), plus the
//! two operations both the consumer and the gRPC server use.

use chrono::Utc;
use commerce_platform::events::{HandlerError, IncomingEvent, enqueue};
use commerce_proto::common::v1::Address;
use commerce_proto::events::v1 as ev;
use commerce_proto::time::timestamp;
use sqlx::postgres::PgConnection;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::Error;
use crate::domain::{self, Move, ShipmentStatus};
use crate::store::{self, Shipment};

/// Actor recorded for changes the saga makes.
pub const SYSTEM_ACTOR: &str = "system";

fn event_status(status: ShipmentStatus) -> ev::ShipmentStatus {
    match status {
        ShipmentStatus::Pending => ev::ShipmentStatus::Pending,
        ShipmentStatus::Assigned => ev::ShipmentStatus::Assigned,
        ShipmentStatus::PickedUp => ev::ShipmentStatus::PickedUp,
        ShipmentStatus::InTransit => ev::ShipmentStatus::InTransit,
        ShipmentStatus::Delivered => ev::ShipmentStatus::Delivered,
        ShipmentStatus::Halted => ev::ShipmentStatus::Halted,
    }
}

/// Creates the shipment of an order (idempotent per order) with
/// `courier_id` if given, otherwise round-robin over `couriers`, otherwise
/// PENDING; publishes ShipmentCreated once.
pub async fn create_shipment(
    conn: &mut PgConnection,
    order_id: &str,
    user_id: &str,
    address: Address,
    courier_id: Option<&str>,
    couriers: &[String],
) -> Result<Shipment, Error> {
    if let Some(existing) = store::find(conn, None, Some(order_id), false).await? {
        return Ok(existing);
    }
    let courier = match courier_id {
        Some(courier) => Some(courier.to_owned()),
        None if couriers.is_empty() => None,
        None => {
            let ticket = store::next_courier_ticket(conn).await?;
            domain::pick_courier(couriers, ticket).map(str::to_owned)
        }
    };
    let id = Uuid::now_v7();
    let now = Utc::now();
    let shipment = Shipment {
        id,
        order_id: order_id.to_owned(),
        user_id: user_id.to_owned(),
        status: if courier.is_some() { ShipmentStatus::Assigned } else { ShipmentStatus::Pending },
        courier_id: courier.unwrap_or_default(),
        address,
        tracking_number: domain::tracking_number(&id),
        halt_reason: String::new(),
        created_at: now,
        updated_at: now,
        delivered_at: None,
    };
    if !store::insert(conn, &shipment).await? {
        // A concurrent twin created it first.
        return store::find(conn, None, Some(order_id), false).await?.ok_or(Error::ShipmentNotFound);
    }
    let description = if shipment.courier_id.is_empty() {
        "shipment created".to_owned()
    } else {
        format!("shipment created and assigned to courier {}", shipment.courier_id)
    };
    store::track(conn, id, shipment.status, &description, "", SYSTEM_ACTOR).await?;
    let event = ev::ShipmentCreated {
        shipment_id: id.to_string(),
        order_id: order_id.to_owned(),
        user_id: user_id.to_owned(),
        courier_id: shipment.courier_id.clone(),
        address: Some(shipment.address.clone()),
        tracking_number: shipment.tracking_number.clone(),
        occurred_at: Some(timestamp(now)),
    };
    enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
    tracing::info!(shipment_id = %id, order_id, courier = %shipment.courier_id, "shipment created");
    Ok(shipment)
}

/// A requested status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub to: ShipmentStatus,
    /// The courier making the change; empty for admins and the system.
    pub courier_id: String,
    pub note: String,
    pub location: String,
    pub actor_id: String,
}

/// Moves a locked shipment per the transition table and publishes the
/// matching event; a repeat of the current status changes nothing.
pub async fn change_status(
    conn: &mut PgConnection,
    shipment: Shipment,
    change: StatusChange,
) -> Result<Shipment, Error> {
    let from = shipment.status;
    if domain::transition(from, change.to).map_err(Error::RefuseTransition)? == Move::Unchanged {
        return Ok(shipment);
    }
    if !change.courier_id.is_empty()
        && !shipment.courier_id.is_empty()
        && shipment.courier_id != change.courier_id
    {
        return Err(Error::DenyCourier { courier_id: change.courier_id });
    }
    let mut next = shipment.clone();
    next.status = change.to;
    if change.to == ShipmentStatus::Assigned {
        if change.courier_id.is_empty() {
            return Err(Error::InvalidRequest {
                field: "courier_id",
                problem: "is needed to assign a shipment",
            });
        }
        next.courier_id = change.courier_id.clone();
    }
    if change.to == ShipmentStatus::Halted {
        next.halt_reason = if change.note.is_empty() { "halted".to_owned() } else { change.note.clone() };
    }
    next.updated_at = store::save(conn, &next).await?;
    if change.to == ShipmentStatus::Delivered {
        next.delivered_at = Some(next.updated_at);
    }
    let description =
        if change.note.is_empty() { format!("shipment {}", change.to) } else { change.note.clone() };
    store::track(conn, next.id, change.to, &description, &change.location, &change.actor_id).await?;
    let occurred_at = Some(timestamp(next.updated_at));
    let (shipment_id, order_id, user_id) = (next.id.to_string(), next.order_id.clone(), next.user_id.clone());
    match change.to {
        ShipmentStatus::Delivered => {
            let event = ev::ShipmentDelivered {
                shipment_id,
                order_id,
                user_id,
                courier_id: next.courier_id.clone(),
                occurred_at,
            };
            enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
        }
        ShipmentStatus::Halted => {
            let event = ev::ShipmentHalted {
                shipment_id,
                order_id,
                user_id,
                previous_status: event_status(from).into(),
                reason: next.halt_reason.clone(),
                occurred_at,
            };
            enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
        }
        _ => {
            let event = ev::ShipmentStatusChanged {
                shipment_id,
                order_id,
                user_id,
                courier_id: next.courier_id.clone(),
                previous_status: event_status(from).into(),
                status: event_status(change.to).into(),
                note: change.note,
                location: change.location,
                occurred_at,
            };
            enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
        }
    }
    Ok(next)
}

/// Consumes the orders topic.
#[derive(Debug, Clone, Default)]
pub struct ShippingEventHandler {
    /// Couriers assigned round-robin to new shipments.
    pub couriers: Vec<String>,
}

commerce_platform::event_handler!(ShippingEventHandler {
    ev::OrderConfirmed => order_confirmed,
    ev::OrderCancelled => order_cancelled,
    ev::UserErased => user_erased,
});

impl ShippingEventHandler {
    /// An erased user's shipments keep only the country of their address.
    async fn user_erased(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        erased: ev::UserErased,
        _: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        if erased.user_id.is_empty() {
            return Err(HandlerError::permanent("UserErased without a user id"));
        }
        let shipments = store::anonymise_user(tx, &erased.user_id).await?;
        tracing::info!(user_id = %erased.user_id, shipments, "an erased user's shipments lost their addresses");
        Ok(())
    }

    async fn order_confirmed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        confirmed: ev::OrderConfirmed,
        _: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let address = confirmed.shipping_address.unwrap_or_default();
        create_shipment(tx, &confirmed.order_id, &confirmed.user_id, address, None, &self.couriers).await?;
        Ok(())
    }

    async fn order_cancelled(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        cancelled: ev::OrderCancelled,
        _: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let Some(shipment) = store::find(tx, None, Some(&cancelled.order_id), true).await? else {
            return Ok(());
        };
        if shipment.status.is_terminal() {
            tracing::info!(order_id = %cancelled.order_id, status = %shipment.status, "cancelled order's shipment already final");
            return Ok(());
        }
        let reason = if cancelled.reason.is_empty() {
            "order cancelled".to_owned()
        } else {
            format!("order cancelled: {}", cancelled.reason)
        };
        let change = StatusChange {
            to: ShipmentStatus::Halted,
            courier_id: String::new(),
            note: reason,
            location: String::new(),
            actor_id: SYSTEM_ACTOR.to_owned(),
        };
        change_status(tx, shipment, change).await?;
        Ok(())
    }
}

impl From<Error> for HandlerError {
    fn from(error: Error) -> Self {
        if error.is_transient() { HandlerError::retryable(error) } else { HandlerError::permanent(error) }
    }
}
