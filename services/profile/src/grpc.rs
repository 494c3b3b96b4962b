//! The `ProfileService` gRPC server: proto <-> domain, each change in one
//! transaction, and the one `From<Error> for Status` mapping.

use commerce_proto::common::v1 as common;
use commerce_proto::profile::v1 as pb;
use commerce_proto::profile::v1::profile_service_server::ProfileService;
use commerce_proto::time::timestamp;
use sqlx::postgres::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Error;
use crate::domain::{self, MAX_ADDRESSES, PostalAddress, ProfileFields};
use crate::store::{self, Address, Profile};

/// The gRPC face of the profile service.
#[derive(Debug, Clone)]
pub struct ProfileGrpc {
    pool: PgPool,
}

impl ProfileGrpc {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn profile_to_proto(user_id: &str, profile: Option<Profile>) -> pb::Profile {
    let Some(profile) = profile else {
        return pb::Profile { user_id: user_id.to_owned(), ..pb::Profile::default() };
    };
    pb::Profile {
        user_id: profile.user_id,
        display_name: profile.display_name,
        phone: profile.phone,
        preferences: Some(pb::Preferences {
            currency: profile.currency,
            marketing_consent: profile.marketing_consent,
        }),
        updated_at: profile.updated_at.map(timestamp),
    }
}

fn postal_from_proto(address: common::Address) -> PostalAddress {
    PostalAddress {
        recipient_name: address.recipient_name,
        line1: address.line1,
        line2: address.line2,
        city: address.city,
        region: address.region,
        postal_code: address.postal_code,
        country_code: address.country_code,
        phone: address.phone,
    }
}

fn address_to_proto(address: Address) -> pb::SavedAddress {
    let postal = address.postal();
    pb::SavedAddress {
        id: address.id.to_string(),
        label: address.label,
        address: Some(common::Address {
            recipient_name: postal.recipient_name,
            line1: postal.line1,
            line2: postal.line2,
            city: postal.city,
            region: postal.region,
            postal_code: postal.postal_code,
            country_code: postal.country_code,
            phone: postal.phone,
        }),
        is_default: address.is_default,
        created_at: Some(timestamp(address.created_at)),
        updated_at: Some(timestamp(address.updated_at)),
    }
}

fn user(user_id: &str) -> Result<&str, Error> {
    if user_id.trim().is_empty() {
        return Err(Error::InvalidRequest { field: "user_id", problem: "must not be empty" });
    }
    Ok(user_id)
}

fn address_id(id: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(id).map_err(|_| Error::AddressNotFound)
}

fn checked<T>(result: Result<T, domain::Invalid>) -> Result<T, Error> {
    result.map_err(|invalid| Error::InvalidRequest { field: invalid.field, problem: invalid.problem })
}

#[tonic::async_trait]
impl ProfileService for ProfileGrpc {
    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::Profile>, Status> {
        let request = request.into_inner();
        let user_id = user(&request.user_id)?;
        let mut conn = self.pool.acquire().await.map_err(Error::Read)?;
        let profile = store::find_profile(&mut conn, user_id).await?;
        Ok(Response::new(profile_to_proto(user_id, profile)))
    }

    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::Profile>, Status> {
        let request = request.into_inner();
        let user_id = user(&request.user_id)?;
        let preferences = request.preferences.unwrap_or_default();
        let fields = ProfileFields {
            display_name: request.display_name,
            phone: request.phone,
            currency: preferences.currency,
            marketing_consent: preferences.marketing_consent,
        };
        checked(domain::check_profile(&fields))?;
        let mut conn = self.pool.acquire().await.map_err(Error::Write)?;
        let profile = store::upsert_profile(&mut conn, user_id, &fields).await?;
        Ok(Response::new(profile_to_proto(user_id, Some(profile))))
    }

    async fn list_addresses(
        &self,
        request: Request<pb::ListAddressesRequest>,
    ) -> Result<Response<pb::ListAddressesResponse>, Status> {
        let request = request.into_inner();
        let user_id = user(&request.user_id)?;
        let mut conn = self.pool.acquire().await.map_err(Error::Read)?;
        let addresses = store::list_addresses(&mut conn, user_id).await?;
        Ok(Response::new(pb::ListAddressesResponse {
            addresses: addresses.into_iter().map(address_to_proto).collect(),
        }))
    }

    async fn add_address(
        &self,
        request: Request<pb::AddAddressRequest>,
    ) -> Result<Response<pb::SavedAddress>, Status> {
        let request = request.into_inner();
        let user_id = user(&request.user_id)?;
        let Some(address) = request.address.map(postal_from_proto) else {
            return Err(Error::InvalidRequest { field: "address", problem: "is required" }.into());
        };
        checked(domain::check_label(&request.label))?;
        checked(domain::check_address(&address))?;
        let mut tx = self.pool.begin().await.map_err(Error::Write)?;
        store::lock_profile(&mut tx, user_id).await?;
        let count = store::count_addresses(&mut tx, user_id).await?;
        if count >= MAX_ADDRESSES {
            return Err(Error::BookFull.into());
        }
        let is_default = request.make_default || count == 0;
        if is_default {
            store::clear_default(&mut tx, user_id).await?;
        }
        let saved = store::insert_address(&mut tx, user_id, &request.label, &address, is_default).await?;
        tx.commit().await.map_err(Error::Write)?;
        Ok(Response::new(address_to_proto(saved)))
    }

    async fn update_address(
        &self,
        request: Request<pb::UpdateAddressRequest>,
    ) -> Result<Response<pb::SavedAddress>, Status> {
        let request = request.into_inner();
        let user_id = user(&request.user_id)?;
        let id = address_id(&request.address_id)?;
        let label = request.label.map(|change| change.label);
        if let Some(label) = &label {
            checked(domain::check_label(label))?;
        }
        let replacement = request.address.map(postal_from_proto);
        if let Some(address) = &replacement {
            checked(domain::check_address(address))?;
        }
        let mut tx = self.pool.begin().await.map_err(Error::Write)?;
        store::lock_profile(&mut tx, user_id).await?;
        let current = store::find_address(&mut tx, user_id, id).await?.ok_or(Error::AddressNotFound)?;
        let is_default = current.is_default || request.make_default;
        if request.make_default && !current.is_default {
            store::clear_default(&mut tx, user_id).await?;
        }
        let label = label.unwrap_or_else(|| current.label.clone());
        let address = replacement.unwrap_or_else(|| current.postal());
        let saved = store::update_address(&mut tx, id, &label, &address, is_default).await?;
        tx.commit().await.map_err(Error::Write)?;
        Ok(Response::new(address_to_proto(saved)))
    }

    async fn delete_address(
        &self,
        request: Request<pb::DeleteAddressRequest>,
    ) -> Result<Response<pb::DeleteAddressResponse>, Status> {
        let request = request.into_inner();
        let user_id = user(&request.user_id)?;
        let id = address_id(&request.address_id)?;
        let mut tx = self.pool.begin().await.map_err(Error::Write)?;
        store::lock_profile(&mut tx, user_id).await?;
        let was_default = store::delete_address(&mut tx, user_id, id).await?.ok_or(Error::AddressNotFound)?;
        if was_default {
            store::promote_newest(&mut tx, user_id).await?;
        }
        tx.commit().await.map_err(Error::Write)?;
        Ok(Response::new(pb::DeleteAddressResponse {}))
    }

    async fn get_default_address(
        &self,
        request: Request<pb::GetDefaultAddressRequest>,
    ) -> Result<Response<pb::SavedAddress>, Status> {
        let request = request.into_inner();
        let user_id = user(&request.user_id)?;
        let mut conn = self.pool.acquire().await.map_err(Error::Read)?;
        let address = store::default_address(&mut conn, user_id).await?.ok_or(Error::NoDefaultAddress)?;
        Ok(Response::new(address_to_proto(address)))
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = crate::error_chain(&error);
        match &error {
            Error::InvalidRequest { .. } => Status::invalid_argument(message),
            Error::AddressNotFound | Error::NoDefaultAddress => Status::not_found(message),
            Error::BookFull => Status::failed_precondition(message),
            _ if error.is_transient() => Status::unavailable(message),
            _ => {
                tracing::error!(error = %message, "profile request failed");
                Status::internal("internal error")
            }
        }
    }
}
