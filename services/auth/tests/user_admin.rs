//! User administration against a real Postgres: `ListUsers` (search in
//! email and display name, role filter, keyset pages, total) and
//! `SetUserRole` (the role reaches the next tokens, each change is one
//! `UserRoleChanged` event; the last active administrator keeps the role,
//! also when two administrators demote each other at once). Handlers are called in process through the generated
//! trait.

mod common;

use commerce_auth::store::{self, NewUser};
use commerce_auth::{AuthArgs, AuthGrpc, KeyRing};
use commerce_proto::auth::v1 as pb;
use commerce_proto::auth::v1::auth_service_server::AuthService;
use commerce_proto::events::EventPayload;
use commerce_proto::events::v1::{self as events, UserRole};
use commerce_token::{Role, Verifier};
use common::TestDatabase;
use prost::Message;
use tonic::{Code, Request};

struct Fixture {
    db: TestDatabase,
    grpc: AuthGrpc,
    args: AuthArgs,
}

async fn fixture() -> anyhow::Result<Fixture> {
    let db = TestDatabase::create("auth", &commerce_auth::MIGRATOR).await?;
    let args = AuthArgs::new();
    let keys = KeyRing::new(&args.issuer, &args.audience);
    commerce_auth::prepare_keys(&db.pool, &keys, &args).await?;
    let grpc = AuthGrpc::new(db.pool.clone(), keys, args.clone());
    Ok(Fixture { db, grpc, args })
}

/// A user stored directly (no password hashing: these tests never sign
/// the user in), returning its id.
async fn user(f: &Fixture, email: &str, display_name: &str, role: Role) -> anyhow::Result<String> {
    let row = store::create_user(
        &f.db.pool,
        NewUser {
            email: email.to_owned(),
            display_name: display_name.to_owned(),
            password_hash: "$argon2id$v=19$m=9216,t=4,p=1$c2FsdHNhbHQ$aGFzaA".to_owned(),
            role,
        },
    )
    .await?;
    Ok(row.id.to_string())
}

async fn list(
    f: &Fixture,
    query: &str,
    role: pb::Role,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListUsersResponse, tonic::Status> {
    let request = pb::ListUsersRequest {
        query: query.to_owned(),
        role: role as i32,
        page_size,
        page_token: page_token.to_owned(),
    };
    AuthService::list_users(&f.grpc, Request::new(request)).await.map(tonic::Response::into_inner)
}

async fn set_role(f: &Fixture, user_id: &str, role: pb::Role) -> Result<pb::User, tonic::Status> {
    let request = pb::SetUserRoleRequest {
        user_id: user_id.to_owned(),
        role: role as i32,
        changed_by: CHANGED_BY.to_owned(),
    };
    let response = AuthService::set_user_role(&f.grpc, Request::new(request)).await?.into_inner();
    Ok(response.user.expect("the changed user"))
}

/// The administrator every role change here is made by.
const CHANGED_BY: &str = "0190a8a0-0000-7000-8000-00000000ad01";

/// The `UserRoleChanged` events in the outbox, oldest first.
async fn role_changes(f: &Fixture) -> anyhow::Result<Vec<(String, events::UserRoleChanged)>> {
    let mut changes = Vec::new();
    for row in common::outbox(&f.db.pool).await? {
        if row.event_type == events::UserRoleChanged::TYPE {
            assert_eq!(row.topic, events::UserRoleChanged::TOPIC.name());
            changes.push((row.key, events::UserRoleChanged::decode(row.payload.as_slice())?));
        }
    }
    Ok(changes)
}

fn emails(page: &pb::ListUsersResponse) -> Vec<&str> {
    page.users.iter().map(|user| user.email.as_str()).collect()
}

#[tokio::test]
async fn admins_page_through_users_newest_first_and_find_them_by_text_in_any_case_or_by_role()
-> anyhow::Result<()> {
    let f = fixture().await?;
    user(&f, "grace@example.com", "Grace Hopper", Role::Admin).await?;
    user(&f, "alan@example.com", "Alan Turing", Role::Customer).await?;
    user(&f, "ada@example.com", "Ada Lovelace", Role::Customer).await?;
    user(&f, "kate@couriers.example", "Kate Sherwood", Role::Courier).await?;
    user(&f, "percent_100@example.com", "Per Cent", Role::Customer).await?;

    let first = list(&f, "", pb::Role::Unspecified, 2, "").await?;
    assert_eq!(emails(&first), ["percent_100@example.com", "kate@couriers.example"]);
    assert_eq!(first.total_size, 5);
    assert!(first.users.iter().all(|user| user.active && user.roles.len() == 1));
    let second = list(&f, "", pb::Role::Unspecified, 2, &first.next_page_token).await?;
    assert_eq!(emails(&second), ["ada@example.com", "alan@example.com"]);
    let last = list(&f, "", pb::Role::Unspecified, 2, &second.next_page_token).await?;
    assert_eq!(emails(&last), ["grace@example.com"]);
    assert_eq!(last.next_page_token, "", "the last page says so");

    // In the display name, any case; in the email.
    assert_eq!(emails(&list(&f, "LOVELACE", pb::Role::Unspecified, 0, "").await?), ["ada@example.com"]);
    let couriers = list(&f, "couriers.", pb::Role::Unspecified, 0, "").await?;
    assert_eq!((emails(&couriers), couriers.total_size), (vec!["kate@couriers.example"], 1));
    // LIKE's wildcards are searched for as themselves.
    assert_eq!(emails(&list(&f, "t_", pb::Role::Unspecified, 0, "").await?), ["percent_100@example.com"]);
    assert_eq!(emails(&list(&f, "%", pb::Role::Unspecified, 0, "").await?), Vec::<&str>::new());
    // Text and role together.
    assert_eq!(emails(&list(&f, "a", pb::Role::Admin, 0, "").await?), ["grace@example.com"]);
    let customers = list(&f, "", pb::Role::Customer, 0, "").await?;
    assert_eq!(customers.total_size, 3);

    for (query, page_token) in [("x".repeat(101), String::new()), (String::new(), "not-a-token".to_owned())] {
        let refused = list(&f, &query, pb::Role::Unspecified, 0, &page_token).await.expect_err("invalid");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    f.db.drop_database().await
}

#[tokio::test]
async fn a_new_role_reaches_the_users_next_tokens_and_the_last_admin_keeps_the_role() -> anyhow::Result<()> {
    let f = fixture().await?;
    let admin = user(&f, "root@example.com", "Root", Role::Admin).await?;
    // Registered through the service, so that it can sign in.
    let registered = AuthService::register(
        &f.grpc,
        Request::new(pb::RegisterRequest {
            email: "margaret@example.com".to_owned(),
            password: "apollo guidance".to_owned(),
            display_name: "Margaret".to_owned(),
        }),
    )
    .await?
    .into_inner();
    let customer = registered.user.expect("user").id;
    let refresh_token = registered.tokens.expect("tokens").refresh_token;

    let promoted = set_role(&f, &customer, pb::Role::Admin).await?;
    assert_eq!(promoted.roles, [pb::Role::Admin as i32]);
    let keys =
        AuthService::get_public_keys(&f.grpc, Request::new(pb::GetPublicKeysRequest {})).await?.into_inner();
    let verifier = Verifier::from_public_keys(&keys.keys, &f.args.issuer, &f.args.audience)?;
    let refreshed = AuthService::refresh(&f.grpc, Request::new(pb::RefreshRequest { refresh_token }))
        .await?
        .into_inner()
        .tokens
        .expect("tokens");
    assert_eq!(
        verifier.verify(&refreshed.access_token)?.role,
        Role::Admin,
        "the next token carries the new role"
    );

    // Two administrators now: one may step down, then the other may not.
    assert_eq!(set_role(&f, &admin, pb::Role::Customer).await?.roles, [pb::Role::Customer as i32]);
    let refused = set_role(&f, &customer, pb::Role::Courier).await.expect_err("last admin");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("last active administrator"), "{}", refused.message());
    // Giving the role a user already has changes nothing and succeeds.
    assert_eq!(set_role(&f, &customer, pb::Role::Admin).await?.roles, [pb::Role::Admin as i32]);

    // One event per change that happened: the promotion and the
    // step-down; neither the refusal nor the change to the same role.
    let changes = role_changes(&f).await?;
    let summary: Vec<(&str, i32, i32, &str)> = changes
        .iter()
        .map(|(key, event)| (key.as_str(), event.previous_role, event.role, event.changed_by.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (customer.as_str(), UserRole::Customer as i32, UserRole::Admin as i32, CHANGED_BY),
            (admin.as_str(), UserRole::Admin as i32, UserRole::Customer as i32, CHANGED_BY),
        ]
    );
    assert!(changes.iter().all(|(key, event)| *key == event.user_id && event.occurred_at.is_some()));

    let unknown =
        set_role(&f, "0190a8a0-0000-7000-8000-000000000000", pb::Role::Admin).await.expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    for (id, role) in [(customer.as_str(), pb::Role::Unspecified), ("not-a-uuid", pb::Role::Admin)] {
        let invalid = set_role(&f, id, role).await.expect_err("invalid");
        assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");
    }
    f.db.drop_database().await
}

#[tokio::test]
async fn two_admins_demoting_each_other_at_once_leave_one_admin() -> anyhow::Result<()> {
    let f = fixture().await?;
    for round in 0..5 {
        let first = user(&f, &format!("first{round}@example.com"), "First", Role::Admin).await?;
        let second = user(&f, &format!("second{round}@example.com"), "Second", Role::Admin).await?;
        let (a, b) =
            tokio::join!(set_role(&f, &first, pb::Role::Customer), set_role(&f, &second, pb::Role::Customer));
        assert_eq!(
            usize::from(a.is_ok()) + usize::from(b.is_ok()),
            1,
            "round {round}: exactly one of two demotions may pass: {a:?} {b:?}"
        );
        let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'admin' AND active")
            .fetch_one(&f.db.pool)
            .await?;
        assert_eq!(admins, 1, "round {round}");
        // The next round starts from two fresh administrators only.
        sqlx::query("UPDATE users SET role = 'customer'").execute(&f.db.pool).await?;
    }
    f.db.drop_database().await
}
