//! The profile service against a real Postgres: profiles, the address
//! book's one default and its limit, and that no user reaches another's
//! addresses.

mod support;

use commerce_profile::grpc::ProfileGrpc;
use commerce_proto::common::v1::Address;
use commerce_proto::profile::v1 as pb;
use commerce_proto::profile::v1::profile_service_server::ProfileService;
use support::TestDatabase;
use tonic::{Code, Request};

async fn service() -> anyhow::Result<(TestDatabase, sqlx::PgPool, ProfileGrpc)> {
    let database = TestDatabase::create("profile").await?;
    let pool = database.pool().await?;
    commerce_platform::db::run_migrations(&pool, &commerce_profile::MIGRATOR).await?;
    Ok((database, pool.clone(), ProfileGrpc::new(pool)))
}

fn address(line1: &str) -> Address {
    Address {
        recipient_name: "Ada".to_owned(),
        line1: line1.to_owned(),
        city: "Berlin".to_owned(),
        postal_code: "10115".to_owned(),
        country_code: "DE".to_owned(),
        ..Address::default()
    }
}

async fn add(
    grpc: &ProfileGrpc,
    user: &str,
    line1: &str,
    make_default: bool,
) -> Result<pb::SavedAddress, tonic::Status> {
    let request = pb::AddAddressRequest {
        user_id: user.to_owned(),
        label: String::new(),
        address: Some(address(line1)),
        make_default,
    };
    Ok(grpc.add_address(Request::new(request)).await?.into_inner())
}

async fn lines(grpc: &ProfileGrpc, user: &str) -> anyhow::Result<Vec<(String, bool)>> {
    let list =
        grpc.list_addresses(Request::new(pb::ListAddressesRequest { user_id: user.to_owned() })).await?;
    Ok(list
        .into_inner()
        .addresses
        .into_iter()
        .map(|a| (a.address.unwrap_or_default().line1, a.is_default))
        .collect())
}

#[tokio::test]
async fn a_profile_is_empty_until_written_and_refuses_a_bad_field_by_name() -> anyhow::Result<()> {
    let (database, pool, grpc) = service().await?;
    let empty = grpc.get_profile(Request::new(pb::GetProfileRequest { user_id: "u1".to_owned() })).await?;
    assert_eq!(empty.into_inner().display_name, "");

    let update = |phone: &str, currency: &str| pb::UpdateProfileRequest {
        user_id: "u1".to_owned(),
        display_name: "Ada L.".to_owned(),
        phone: phone.to_owned(),
        preferences: Some(pb::Preferences { currency: currency.to_owned(), marketing_consent: true }),
    };
    let saved = grpc.update_profile(Request::new(update("+4930123456", "EUR"))).await?.into_inner();
    assert_eq!((saved.display_name.as_str(), saved.phone.as_str()), ("Ada L.", "+4930123456"));
    assert!(saved.updated_at.is_some());
    let read = grpc.get_profile(Request::new(pb::GetProfileRequest { user_id: "u1".to_owned() })).await?;
    assert_eq!(read.into_inner(), saved);

    let bad = grpc.update_profile(Request::new(update("030 123", "EUR"))).await.expect_err("bad phone");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("phone"), "{}", bad.message());
    let bad = grpc.update_profile(Request::new(update("", "euro"))).await.expect_err("bad currency");
    assert!(bad.message().contains("preferences.currency"), "{}", bad.message());

    pool.close().await;
    database.drop_database().await
}

#[tokio::test]
async fn the_address_book_keeps_exactly_one_default_and_checkout_finds_it() -> anyhow::Result<()> {
    let (database, pool, grpc) = service().await?;
    let none = grpc
        .get_default_address(Request::new(pb::GetDefaultAddressRequest { user_id: "u2".to_owned() }))
        .await
        .expect_err("an empty book");
    assert_eq!(none.code(), Code::NotFound);

    let home = add(&grpc, "u2", "1 Home St", false).await?;
    assert!(home.is_default, "the first address is the default");
    let office = add(&grpc, "u2", "2 Office Rd", false).await?;
    assert!(!office.is_default);
    let cabin = add(&grpc, "u2", "3 Cabin Way", true).await?;
    assert_eq!(
        lines(&grpc, "u2").await?,
        [
            ("3 Cabin Way".to_owned(), true),
            ("2 Office Rd".to_owned(), false),
            ("1 Home St".to_owned(), false)
        ]
    );

    let promoted = grpc
        .update_address(Request::new(pb::UpdateAddressRequest {
            user_id: "u2".to_owned(),
            address_id: office.id.clone(),
            label: Some(pb::LabelChange { label: "Office".to_owned() }),
            address: None,
            make_default: true,
        }))
        .await?
        .into_inner();
    assert!(promoted.is_default);
    assert_eq!(promoted.label, "Office");
    assert_eq!(promoted.address.map(|a| a.line1).as_deref(), Some("2 Office Rd"), "the address stays");
    let default = grpc
        .get_default_address(Request::new(pb::GetDefaultAddressRequest { user_id: "u2".to_owned() }))
        .await?
        .into_inner();
    assert_eq!(default.id, office.id);

    // Deleting the default makes the newest remaining one the default.
    grpc.delete_address(Request::new(pb::DeleteAddressRequest {
        user_id: "u2".to_owned(),
        address_id: office.id.clone(),
    }))
    .await?;
    assert_eq!(
        lines(&grpc, "u2").await?,
        [("3 Cabin Way".to_owned(), true), ("1 Home St".to_owned(), false)]
    );
    assert_eq!(cabin.address.map(|a| a.line1).as_deref(), Some("3 Cabin Way"));

    // Another user reaches none of it.
    for result in [
        grpc.delete_address(Request::new(pb::DeleteAddressRequest {
            user_id: "intruder".to_owned(),
            address_id: home.id.clone(),
        }))
        .await
        .map(|_| ()),
        grpc.update_address(Request::new(pb::UpdateAddressRequest {
            user_id: "intruder".to_owned(),
            address_id: home.id.clone(),
            label: None,
            address: Some(address("4 Stolen Ln")),
            make_default: false,
        }))
        .await
        .map(|_| ()),
    ] {
        assert_eq!(result.expect_err("not theirs").code(), Code::NotFound);
    }
    assert_eq!(lines(&grpc, "u2").await?.len(), 2, "untouched");

    pool.close().await;
    database.drop_database().await
}

#[tokio::test]
async fn concurrent_additions_keep_one_default_and_the_limit_of_twenty() -> anyhow::Result<()> {
    let (database, pool, grpc) = service().await?;
    let mut tasks = Vec::new();
    for n in 0..24 {
        let grpc = grpc.clone();
        tasks.push(tokio::spawn(async move { add(&grpc, "u3", &format!("{n} Race St"), n % 3 == 0).await }));
    }
    let mut added = 0;
    let mut full = 0;
    for task in tasks {
        match task.await? {
            Ok(_) => added += 1,
            Err(status) if status.code() == Code::FailedPrecondition => full += 1,
            Err(status) => anyhow::bail!("unexpected {status:?}"),
        }
    }
    assert_eq!((added, full), (20, 4));
    let book = lines(&grpc, "u3").await?;
    assert_eq!(book.len(), 20);
    assert_eq!(book.iter().filter(|(_, is_default)| *is_default).count(), 1, "{book:?}");
    let bad = grpc
        .add_address(Request::new(pb::AddAddressRequest {
            user_id: "u4".to_owned(),
            label: String::new(),
            address: Some(Address { country_code: "Germany".to_owned(), ..address("5 Bad St") }),
            make_default: false,
        }))
        .await
        .expect_err("a country name is not a code");
    assert!(bad.message().contains("address.country_code"), "{}", bad.message());
    pool.close().await;
    database.drop_database().await
}
