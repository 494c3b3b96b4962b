//! Shipping rules, free of I/O: the shipment's transition table, courier
//! choice and tracking numbers.

use std::fmt;

/// Where a shipment is; mirrors `commerce.shipping.v1.ShipmentStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShipmentStatus {
    Pending,
    Assigned,
    PickedUp,
    InTransit,
    Delivered,
    Halted,
}

impl ShipmentStatus {
    pub const ALL: [ShipmentStatus; 6] =
        [Self::Pending, Self::Assigned, Self::PickedUp, Self::InTransit, Self::Delivered, Self::Halted];

    /// The name stored in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Assigned => "ASSIGNED",
            Self::PickedUp => "PICKED_UP",
            Self::InTransit => "IN_TRANSIT",
            Self::Delivered => "DELIVERED",
            Self::Halted => "HALTED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }

    /// DELIVERED and HALTED never change again.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Delivered | Self::Halted)
    }
}

impl fmt::Display for ShipmentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a requested move does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// The shipment already is in that status: nothing to write or publish.
    Unchanged,
    /// A valid step forward (or a halt).
    Advance,
}

/// A move the transition table does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a shipment cannot move from {from} to {to}")]
pub struct InvalidTransition {
    pub from: ShipmentStatus,
    pub to: ShipmentStatus,
}

/// The transition table: PENDING -> ASSIGNED -> PICKED_UP -> IN_TRANSIT ->
/// DELIVERED, any non-terminal status -> HALTED; repeating the current status
/// is a no-op.
pub fn transition(from: ShipmentStatus, to: ShipmentStatus) -> Result<Move, InvalidTransition> {
    use ShipmentStatus::*;
    if from == to {
        return Ok(Move::Unchanged);
    }
    match (from, to) {
        (Pending, Assigned) | (Assigned, PickedUp) | (PickedUp, InTransit) | (InTransit, Delivered) => {
            Ok(Move::Advance)
        }
        (from, Halted) if !from.is_terminal() => Ok(Move::Advance),
        _ => Err(InvalidTransition { from, to }),
    }
}

/// The courier for the `ticket`-th new shipment, round-robin over
/// `couriers`; `None` (the shipment stays PENDING until a courier takes it)
/// when none is configured.
pub fn pick_courier(couriers: &[String], ticket: u64) -> Option<&str> {
    if couriers.is_empty() {
        return None;
    }
    let index = usize::try_from(ticket % couriers.len() as u64).unwrap_or(0);
    couriers.get(index).map(String::as_str)
}

/// A tracking number a person can read out: `TRK` and the shipment id's
/// first 12 hex digits, upper case.
pub fn tracking_number(shipment_id: &uuid::Uuid) -> String {
    let hex = shipment_id.simple().to_string().to_uppercase();
    format!("TRK{}", &hex[hex.len() - 12..])
}

#[cfg(test)]
mod tests {
    use super::ShipmentStatus::*;
    use super::*;

    #[test]
    fn the_happy_path_moves_one_step_at_a_time() {
        for (from, to) in
            [(Pending, Assigned), (Assigned, PickedUp), (PickedUp, InTransit), (InTransit, Delivered)]
        {
            assert_eq!(transition(from, to), Ok(Move::Advance), "{from} -> {to}");
        }
    }

    #[test]
    fn skipping_going_back_and_leaving_terminal_states_are_invalid() {
        for (from, to) in [
            (Pending, PickedUp),
            (Assigned, Delivered),
            (InTransit, PickedUp),
            (Delivered, Halted),
            (Halted, Assigned),
            (Delivered, InTransit),
            (PickedUp, Pending),
        ] {
            assert_eq!(transition(from, to), Err(InvalidTransition { from, to }), "{from} -> {to}");
        }
    }

    #[test]
    fn every_non_terminal_status_can_be_halted() {
        for from in ShipmentStatus::ALL.into_iter().filter(|status| !status.is_terminal()) {
            assert_eq!(transition(from, Halted), Ok(Move::Advance), "{from}");
        }
    }

    #[test]
    fn repeating_the_current_status_is_a_no_op() {
        for status in ShipmentStatus::ALL {
            assert_eq!(transition(status, status), Ok(Move::Unchanged));
        }
    }

    #[test]
    fn the_table_is_exhaustive_over_every_pair() {
        let mut allowed = 0;
        for from in ShipmentStatus::ALL {
            for to in ShipmentStatus::ALL {
                if transition(from, to) == Ok(Move::Advance) {
                    allowed += 1;
                }
            }
        }
        assert_eq!(allowed, 4 + 4, "four forward steps and four halts");
    }

    #[test]
    fn couriers_are_picked_round_robin() {
        let couriers = vec!["ana".to_owned(), "bo".to_owned()];
        let picks: Vec<_> = (0..4).map(|ticket| pick_courier(&couriers, ticket)).collect();
        assert_eq!(picks, [Some("ana"), Some("bo"), Some("ana"), Some("bo")]);
        assert_eq!(pick_courier(&[], 3), None);
    }

    #[test]
    fn statuses_round_trip_and_tracking_numbers_are_readable() {
        for status in ShipmentStatus::ALL {
            assert_eq!(ShipmentStatus::parse(status.as_str()), Some(status));
        }
        let number = tracking_number(&uuid::Uuid::nil());
        assert_eq!(number, "TRK000000000000");
    }
}
