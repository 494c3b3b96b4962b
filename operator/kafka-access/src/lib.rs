//! Kafka SCRAM users and ACLs through librdkafka's admin API.
//!
//! rust-rdkafka wraps topic, config and group administration but not
//! `AlterUserScramCredentials` or the ACL calls (KIP-554, KIP-140), and no
//! maintained crate speaks them over TLS and SASL. librdkafka has them since
//! 2.2, and the operator already links it (with OpenSSL, which SCRAM
//! needs to salt passwords), so this crate is a thin safe wrapper over the
//! five C calls it uses. It is the only crate of the project that may use
//! `unsafe`; every block says why it is sound.
//!
//! Each call runs on a blocking thread: it makes a private result queue on
//! the client, starts the request with it and waits for the one result
//! event (librdkafka delivers one even when the request times out). Every
//! librdkafka object made here is owned by a guard that frees it, on error
//! paths too; librdkafka copies its arguments, so they are freed after the
//! call that used them.

use std::ffi::{CStr, CString, c_char};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka_sys as sys;
use rdkafka_sys::types::RDKafkaRespErr;

/// How long the broker may take to answer one request by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Waited beyond the request timeout for librdkafka's own timeout event.
const EVENT_MARGIN: Duration = Duration::from_secs(5);

/// What went wrong talking to the brokers.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The client could not be made from its configuration.
    #[error("cannot create a Kafka admin client: {0}")]
    Client(#[source] KafkaError),
    /// An argument librdkafka refused before sending anything.
    #[error("{operation}: invalid argument: {message}")]
    Invalid {
        /// The admin operation.
        operation: &'static str,
        /// librdkafka's words.
        message: String,
    },
    /// The brokers refused the request, or a part of it.
    #[error("{operation}: {code}: {message}")]
    Refused {
        /// The admin operation.
        operation: &'static str,
        /// Kafka's or librdkafka's error code.
        code: RDKafkaErrorCode,
        /// The broker's or librdkafka's message.
        message: String,
    },
    /// No result arrived in time.
    #[error("{operation}: no answer within {timeout:?}")]
    TimedOut {
        /// The admin operation.
        operation: &'static str,
        /// The time waited.
        timeout: Duration,
    },
    /// The blocking task did not finish (the runtime is shutting down).
    #[error("{operation}: the admin task ended early: {message}")]
    Task {
        /// The admin operation.
        operation: &'static str,
        /// Why.
        message: String,
    },
}

impl AccessError {
    /// The Kafka error code, where the brokers or librdkafka gave one.
    pub fn code(&self) -> Option<RDKafkaErrorCode> {
        match self {
            AccessError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A SCRAM mechanism of KIP-554.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScramMechanism {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl ScramMechanism {
    fn native(self) -> sys::rd_kafka_ScramMechanism_t {
        match self {
            ScramMechanism::Sha256 => sys::rd_kafka_ScramMechanism_t::RD_KAFKA_SCRAM_MECHANISM_SHA_256,
            ScramMechanism::Sha512 => sys::rd_kafka_ScramMechanism_t::RD_KAFKA_SCRAM_MECHANISM_SHA_512,
        }
    }
}

/// What kind of resource an ACL is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
    /// The cluster (resource name `kafka-cluster`).
    Cluster,
    /// A transactional id.
    TransactionalId,
    /// A type this crate does not name.
    Unknown,
}

impl ResourceType {
    fn native(self) -> sys::rd_kafka_ResourceType_t {
        use sys::rd_kafka_ResourceType_t as N;
        match self {
            ResourceType::Topic => N::RD_KAFKA_RESOURCE_TOPIC,
            ResourceType::Group => N::RD_KAFKA_RESOURCE_GROUP,
            // librdkafka names Kafka's CLUSTER resource type (4) BROKER.
            ResourceType::Cluster => N::RD_KAFKA_RESOURCE_BROKER,
            ResourceType::TransactionalId => N::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID,
            ResourceType::Unknown => N::RD_KAFKA_RESOURCE_UNKNOWN,
        }
    }

    fn from_native(native: sys::rd_kafka_ResourceType_t) -> Self {
        use sys::rd_kafka_ResourceType_t as N;
        match native {
            N::RD_KAFKA_RESOURCE_TOPIC => ResourceType::Topic,
            N::RD_KAFKA_RESOURCE_GROUP => ResourceType::Group,
            N::RD_KAFKA_RESOURCE_BROKER => ResourceType::Cluster,
            N::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID => ResourceType::TransactionalId,
            _ => ResourceType::Unknown,
        }
    }
}

/// How an ACL's resource name matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PatternType {
    /// The name exactly (`*`: every resource).
    Literal,
    /// Every resource whose name starts with the name.
    Prefixed,
    /// A type this crate does not name.
    Unknown,
}

impl PatternType {
    fn native(self) -> sys::rd_kafka_ResourcePatternType_t {
        use sys::rd_kafka_ResourcePatternType_t as N;
        match self {
            PatternType::Literal => N::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
            PatternType::Prefixed => N::RD_KAFKA_RESOURCE_PATTERN_PREFIXED,
            PatternType::Unknown => N::RD_KAFKA_RESOURCE_PATTERN_UNKNOWN,
        }
    }

    fn from_native(native: sys::rd_kafka_ResourcePatternType_t) -> Self {
        use sys::rd_kafka_ResourcePatternType_t as N;
        match native {
            N::RD_KAFKA_RESOURCE_PATTERN_LITERAL => PatternType::Literal,
            N::RD_KAFKA_RESOURCE_PATTERN_PREFIXED => PatternType::Prefixed,
            _ => PatternType::Unknown,
        }
    }
}

/// An operation an ACL allows or denies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// Every operation.
    All,
    /// Fetch, join a group, commit offsets.
    Read,
    /// Produce.
    Write,
    /// Create topics.
    Create,
    /// Delete topics, records, groups.
    Delete,
    /// Alter (partitions, ACLs).
    Alter,
    /// Describe (metadata, offsets); implied by the others.
    Describe,
    /// Broker-to-broker actions.
    ClusterAction,
    /// Read configs.
    DescribeConfigs,
    /// Change configs.
    AlterConfigs,
    /// Idempotent produce (cluster).
    IdempotentWrite,
    /// An operation this crate does not name.
    Unknown,
}

impl Operation {
    fn native(self) -> sys::rd_kafka_AclOperation_t {
        use sys::rd_kafka_AclOperation_t as N;
        match self {
            Operation::All => N::RD_KAFKA_ACL_OPERATION_ALL,
            Operation::Read => N::RD_KAFKA_ACL_OPERATION_READ,
            Operation::Write => N::RD_KAFKA_ACL_OPERATION_WRITE,
            Operation::Create => N::RD_KAFKA_ACL_OPERATION_CREATE,
            Operation::Delete => N::RD_KAFKA_ACL_OPERATION_DELETE,
            Operation::Alter => N::RD_KAFKA_ACL_OPERATION_ALTER,
            Operation::Describe => N::RD_KAFKA_ACL_OPERATION_DESCRIBE,
            Operation::ClusterAction => N::RD_KAFKA_ACL_OPERATION_CLUSTER_ACTION,
            Operation::DescribeConfigs => N::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS,
            Operation::AlterConfigs => N::RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS,
            Operation::IdempotentWrite => N::RD_KAFKA_ACL_OPERATION_IDEMPOTENT_WRITE,
            Operation::Unknown => N::RD_KAFKA_ACL_OPERATION_UNKNOWN,
        }
    }

    fn from_native(native: sys::rd_kafka_AclOperation_t) -> Self {
        use sys::rd_kafka_AclOperation_t as N;
        match native {
            N::RD_KAFKA_ACL_OPERATION_ALL => Operation::All,
            N::RD_KAFKA_ACL_OPERATION_READ => Operation::Read,
            N::RD_KAFKA_ACL_OPERATION_WRITE => Operation::Write,
            N::RD_KAFKA_ACL_OPERATION_CREATE => Operation::Create,
            N::RD_KAFKA_ACL_OPERATION_DELETE => Operation::Delete,
            N::RD_KAFKA_ACL_OPERATION_ALTER => Operation::Alter,
            N::RD_KAFKA_ACL_OPERATION_DESCRIBE => Operation::Describe,
            N::RD_KAFKA_ACL_OPERATION_CLUSTER_ACTION => Operation::ClusterAction,
            N::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS => Operation::DescribeConfigs,
            N::RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS => Operation::AlterConfigs,
            N::RD_KAFKA_ACL_OPERATION_IDEMPOTENT_WRITE => Operation::IdempotentWrite,
            _ => Operation::Unknown,
        }
    }
}

/// Whether an ACL allows or denies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Allows.
    Allow,
    /// Denies (wins over any allow).
    Deny,
    /// A type this crate does not name.
    Unknown,
}

impl Permission {
    fn native(self) -> sys::rd_kafka_AclPermissionType_t {
        use sys::rd_kafka_AclPermissionType_t as N;
        match self {
            Permission::Allow => N::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
            Permission::Deny => N::RD_KAFKA_ACL_PERMISSION_TYPE_DENY,
            Permission::Unknown => N::RD_KAFKA_ACL_PERMISSION_TYPE_UNKNOWN,
        }
    }

    fn from_native(native: sys::rd_kafka_AclPermissionType_t) -> Self {
        use sys::rd_kafka_AclPermissionType_t as N;
        match native {
            N::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW => Permission::Allow,
            N::RD_KAFKA_ACL_PERMISSION_TYPE_DENY => Permission::Deny,
            _ => Permission::Unknown,
        }
    }
}

/// One ACL: a principal may (or may not) do an operation on resources.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AclBinding {
    /// The kind of resource.
    pub resource_type: ResourceType,
    /// Its name (or prefix).
    pub resource_name: String,
    /// How the name matches.
    pub pattern: PatternType,
    /// `User:<name>`.
    pub principal: String,
    /// The client host, `*` for any.
    pub host: String,
    /// The operation.
    pub operation: Operation,
    /// Allow or deny.
    pub permission: Permission,
}

impl AclBinding {
    /// Allows `principal` `operation` on every resource of `resource_type`
    /// whose name starts with `prefix`, from any host.
    pub fn allow_prefixed(
        resource_type: ResourceType,
        prefix: &str,
        principal: &str,
        operation: Operation,
    ) -> Self {
        AclBinding {
            resource_type,
            resource_name: prefix.to_owned(),
            pattern: PatternType::Prefixed,
            principal: principal.to_owned(),
            host: "*".to_owned(),
            operation,
            permission: Permission::Allow,
        }
    }
}

/// A client for SCRAM users and ACLs. Cheap to clone (one client shared);
/// the calls take `&self` and run concurrently.
#[derive(Clone)]
pub struct KafkaAccess {
    admin: Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
}

impl std::fmt::Debug for KafkaAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAccess").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl KafkaAccess {
    /// A client for the brokers and security settings of `config`; it
    /// connects in the background.
    pub fn new(config: &ClientConfig) -> Result<Self, AccessError> {
        let admin = config.create().map_err(AccessError::Client)?;
        Ok(KafkaAccess { admin: Arc::new(admin), timeout: DEFAULT_TIMEOUT })
    }

    /// How long each request may take (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets `user`'s `mechanism` credential to `password` (creating the
    /// user), with a random salt and `iterations` (Kafka takes 4096 to
    /// 16384).
    pub async fn upsert_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
        password: &str,
        iterations: i32,
    ) -> Result<(), AccessError> {
        const OPERATION: &str = "AlterUserScramCredentials (upsert)";
        let user = c_string(OPERATION, user)?;
        let password = password.as_bytes().to_vec();
        self.blocking(OPERATION, move |request| {
            // SAFETY: `user` is a NUL-terminated string and `password` a
            // byte buffer of the given length, both alive for the call,
            // which copies them. A null salt of size 0 asks librdkafka for a
            // random one.
            let alteration = Alterations(vec![unsafe {
                sys::rd_kafka_UserScramCredentialUpsertion_new(
                    user.as_ptr(),
                    mechanism.native(),
                    iterations,
                    password.as_ptr(),
                    password.len(),
                    std::ptr::null(),
                    0,
                )
            }]);
            alter_scram(request, OPERATION, alteration).map(|_| ())
        })
        .await
    }

    /// Deletes `user`'s `mechanism` credential. `Ok(false)`: there was none.
    pub async fn delete_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<bool, AccessError> {
        const OPERATION: &str = "AlterUserScramCredentials (delete)";
        let user = c_string(OPERATION, user)?;
        self.blocking(OPERATION, move |request| {
            // SAFETY: `user` is a NUL-terminated string alive for the call,
            // which copies it.
            let alteration = Alterations(vec![unsafe {
                sys::rd_kafka_UserScramCredentialDeletion_new(user.as_ptr(), mechanism.native())
            }]);
            match alter_scram(request, OPERATION, alteration) {
                Ok(()) => Ok(true),
                Err(error) if error.code() == Some(RDKafkaErrorCode::ResourceNotFound) => Ok(false),
                Err(error) => Err(error),
            }
        })
        .await
    }

    /// Every ACL whose principal is `principal`.
    pub async fn acls_of(&self, principal: &str) -> Result<Vec<AclBinding>, AccessError> {
        const OPERATION: &str = "DescribeAcls";
        let principal = c_string(OPERATION, principal)?;
        self.blocking(OPERATION, move |request| {
            let filter = principal_filter(OPERATION, &principal)?;
            let event = request.run(
                OPERATION,
                sys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBEACLS,
                sys::RD_KAFKA_EVENT_DESCRIBEACLS_RESULT,
                // SAFETY: the handle, options and queue are live (see
                // `Request::run`); the filter is live and copied.
                |rk, options, queue| unsafe { sys::rd_kafka_DescribeAcls(rk, filter.0, options, queue) },
            )?;
            // SAFETY: the event is a DescribeAcls result (checked by `run`);
            // the array and its bindings belong to the event, which outlives
            // this block, and are read only here.
            unsafe {
                let result = sys::rd_kafka_event_DescribeAcls_result(event.0);
                let mut count = 0;
                let acls = sys::rd_kafka_DescribeAcls_result_acls(result, &mut count);
                Ok((0..count).map(|i| binding_of(*acls.add(i))).collect())
            }
        })
        .await
    }

    /// Creates the ACLs; one that exists already is no error.
    pub async fn create_acls(&self, bindings: &[AclBinding]) -> Result<(), AccessError> {
        const OPERATION: &str = "CreateAcls";
        if bindings.is_empty() {
            return Ok(());
        }
        let bindings = bindings.to_vec();
        self.blocking(OPERATION, move |request| {
            let mut natives = Bindings(Vec::with_capacity(bindings.len()));
            for binding in &bindings {
                natives.0.push(native_binding(OPERATION, binding)?);
            }
            let event = request.run(
                OPERATION,
                sys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_CREATEACLS,
                sys::RD_KAFKA_EVENT_CREATEACLS_RESULT,
                // SAFETY: as in `acls_of`; the array of live bindings is
                // copied by the call.
                |rk, options, queue| unsafe {
                    sys::rd_kafka_CreateAcls(rk, natives.0.as_mut_ptr(), natives.0.len(), options, queue)
                },
            )?;
            // SAFETY: the event is a CreateAcls result; its per-binding
            // results belong to it and are read only here.
            unsafe {
                let result = sys::rd_kafka_event_CreateAcls_result(event.0);
                let mut count = 0;
                let results = sys::rd_kafka_CreateAcls_result_acls(result, &mut count);
                for i in 0..count {
                    check_error(OPERATION, sys::rd_kafka_acl_result_error(*results.add(i)))?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Deletes every ACL whose principal is `principal`; returns how many.
    pub async fn delete_acls_of(&self, principal: &str) -> Result<usize, AccessError> {
        const OPERATION: &str = "DeleteAcls";
        let principal = c_string(OPERATION, principal)?;
        self.blocking(OPERATION, move |request| {
            let mut filters = Bindings(vec![principal_filter(OPERATION, &principal)?.take()]);
            let event = request.run(
                OPERATION,
                sys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DELETEACLS,
                sys::RD_KAFKA_EVENT_DELETEACLS_RESULT,
                // SAFETY: as in `create_acls`.
                |rk, options, queue| unsafe {
                    sys::rd_kafka_DeleteAcls(rk, filters.0.as_mut_ptr(), filters.0.len(), options, queue)
                },
            )?;
            // SAFETY: the event is a DeleteAcls result; its responses belong
            // to it and are read only here.
            unsafe {
                let result = sys::rd_kafka_event_DeleteAcls_result(event.0);
                let mut count = 0;
                let responses = sys::rd_kafka_DeleteAcls_result_responses(result, &mut count);
                let mut deleted = 0;
                for i in 0..count {
                    let response = *responses.add(i);
                    check_error(OPERATION, sys::rd_kafka_DeleteAcls_result_response_error(response))?;
                    let mut matching = 0;
                    sys::rd_kafka_DeleteAcls_result_response_matching_acls(response, &mut matching);
                    deleted += matching;
                }
                Ok(deleted)
            }
        })
        .await
    }

    /// Runs `call` on a blocking thread with a [`Request`] on this client.
    async fn blocking<T: Send + 'static>(
        &self,
        operation: &'static str,
        call: impl FnOnce(&Request) -> Result<T, AccessError> + Send + 'static,
    ) -> Result<T, AccessError> {
        let request = Request { admin: Arc::clone(&self.admin), timeout: self.timeout };
        tokio::task::spawn_blocking(move || call(&request))
            .await
            .map_err(|error| AccessError::Task { operation, message: error.to_string() })?
    }
}

/// One admin request's client and time limit.
struct Request {
    admin: Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
}

impl Request {
    /// Starts a request with `start` (given the client handle, options for
    /// `op` with the request timeout, and a private result queue) and waits
    /// for its result event, which must be of `expected` type and carry no
    /// request-level error.
    fn run(
        &self,
        operation: &'static str,
        op: sys::rd_kafka_admin_op_t,
        expected: i32,
        start: impl FnOnce(*mut sys::rd_kafka_t, *const sys::rd_kafka_AdminOptions_t, *mut sys::rd_kafka_queue_t),
    ) -> Result<Event, AccessError> {
        let rk = self.admin.inner().native_ptr();
        // SAFETY: `rk` is the live handle of `self.admin`, which this
        // request holds until it returns.
        let queue = Queue(unsafe { sys::rd_kafka_queue_new(rk) });
        // SAFETY: as above; `op` is a valid admin operation.
        let options = Options(unsafe { sys::rd_kafka_AdminOptions_new(rk, op) });
        let millis = i32::try_from(self.timeout.as_millis()).unwrap_or(i32::MAX);
        let mut errstr = [0 as c_char; 512];
        // SAFETY: the options are live and `errstr` is a writable buffer of
        // the length given.
        let set = unsafe {
            sys::rd_kafka_AdminOptions_set_request_timeout(
                options.0,
                millis,
                errstr.as_mut_ptr(),
                errstr.len(),
            )
        };
        if set != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            // SAFETY: librdkafka wrote a NUL-terminated message into errstr.
            return Err(AccessError::Invalid { operation, message: unsafe { text(errstr.as_ptr()) } });
        }
        start(rk, options.0, queue.0);
        let wait = self.timeout + EVENT_MARGIN;
        let wait_millis = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the queue is live; the event returned (if any) is ours.
        let event = unsafe { sys::rd_kafka_queue_poll(queue.0, wait_millis) };
        if event.is_null() {
            return Err(AccessError::TimedOut { operation, timeout: wait });
        }
        let event = Event(event);
        // SAFETY: the event is live; the error string it returns belongs to
        // it and is copied at once.
        unsafe {
            let kind = sys::rd_kafka_event_type(event.0);
            if kind != expected {
                return Err(AccessError::Invalid {
                    operation,
                    message: format!("librdkafka answered with event type {kind}, expected {expected}"),
                });
            }
            let code = sys::rd_kafka_event_error(event.0);
            if code != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
                return Err(AccessError::Refused {
                    operation,
                    code: code.into(),
                    message: text(sys::rd_kafka_event_error_string(event.0)),
                });
            }
        }
        Ok(event)
    }
}

/// Sends SCRAM alterations and checks each user's result.
fn alter_scram(
    request: &Request,
    operation: &'static str,
    mut alterations: Alterations,
) -> Result<(), AccessError> {
    if alterations.0.iter().any(|a| a.is_null()) {
        return Err(AccessError::Invalid { operation, message: "librdkafka refused the alteration".into() });
    }
    let event = request.run(
        operation,
        sys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_ALTERUSERSCRAMCREDENTIALS,
        sys::RD_KAFKA_EVENT_ALTERUSERSCRAMCREDENTIALS_RESULT,
        // SAFETY: the handle, options and queue are live (see
        // `Request::run`); the array of live alterations is copied.
        |rk, options, queue| unsafe {
            sys::rd_kafka_AlterUserScramCredentials(
                rk,
                alterations.0.as_mut_ptr(),
                alterations.0.len(),
                options,
                queue,
            )
        },
    )?;
    // SAFETY: the event is an AlterUserScramCredentials result; its
    // responses belong to it and are read only here.
    unsafe {
        let result = sys::rd_kafka_event_AlterUserScramCredentials_result(event.0);
        let mut count = 0;
        let responses = sys::rd_kafka_AlterUserScramCredentials_result_responses(result, &mut count);
        for i in 0..count {
            check_error(
                operation,
                sys::rd_kafka_AlterUserScramCredentials_result_response_error(*responses.add(i)),
            )?;
        }
    }
    Ok(())
}

/// A filter matching every ACL of `principal`.
fn principal_filter(operation: &'static str, principal: &CStr) -> Result<Binding, AccessError> {
    let mut errstr = [0 as c_char; 512];
    // SAFETY: `principal` is NUL-terminated and copied; null name and host
    // match any; `errstr` is writable for its length.
    let filter = unsafe {
        sys::rd_kafka_AclBindingFilter_new(
            sys::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_ANY,
            std::ptr::null(),
            sys::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_ANY,
            principal.as_ptr(),
            std::ptr::null(),
            sys::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_ANY,
            sys::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ANY,
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    };
    if filter.is_null() {
        // SAFETY: librdkafka wrote a NUL-terminated message into errstr.
        return Err(AccessError::Invalid { operation, message: unsafe { text(errstr.as_ptr()) } });
    }
    Ok(Binding(filter))
}

/// librdkafka's copy of `binding`.
fn native_binding(
    operation: &'static str,
    binding: &AclBinding,
) -> Result<*mut sys::rd_kafka_AclBinding_t, AccessError> {
    let name = c_string(operation, &binding.resource_name)?;
    let principal = c_string(operation, &binding.principal)?;
    let host = c_string(operation, &binding.host)?;
    let mut errstr = [0 as c_char; 512];
    // SAFETY: the strings are NUL-terminated and copied; `errstr` is
    // writable for its length.
    let native = unsafe {
        sys::rd_kafka_AclBinding_new(
            binding.resource_type.native(),
            name.as_ptr(),
            binding.pattern.native(),
            principal.as_ptr(),
            host.as_ptr(),
            binding.operation.native(),
            binding.permission.native(),
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    };
    if native.is_null() {
        // SAFETY: librdkafka wrote a NUL-terminated message into errstr.
        let message = unsafe { text(errstr.as_ptr()) };
        return Err(AccessError::Invalid { operation, message: format!("{binding:?}: {message}") });
    }
    Ok(native)
}

/// Reads a binding librdkafka returned.
///
/// # Safety
/// `binding` must point to a live ACL binding.
unsafe fn binding_of(binding: *const sys::rd_kafka_AclBinding_t) -> AclBinding {
    // SAFETY: the caller guarantees a live binding; the strings returned
    // belong to it and are copied at once.
    unsafe {
        AclBinding {
            resource_type: ResourceType::from_native(sys::rd_kafka_AclBinding_restype(binding)),
            resource_name: text(sys::rd_kafka_AclBinding_name(binding)),
            pattern: PatternType::from_native(sys::rd_kafka_AclBinding_resource_pattern_type(binding)),
            principal: text(sys::rd_kafka_AclBinding_principal(binding)),
            host: text(sys::rd_kafka_AclBinding_host(binding)),
            operation: Operation::from_native(sys::rd_kafka_AclBinding_operation(binding)),
            permission: Permission::from_native(sys::rd_kafka_AclBinding_permission_type(binding)),
        }
    }
}

/// `Err` for a non-null error object of a partial result.
///
/// # Safety
/// `error` must be null or a live error object.
unsafe fn check_error(
    operation: &'static str,
    error: *const sys::rd_kafka_error_t,
) -> Result<(), AccessError> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: the caller guarantees a live error; its string is copied.
    let (code, message) =
        unsafe { (sys::rd_kafka_error_code(error), text(sys::rd_kafka_error_string(error))) };
    if code == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Ok(());
    }
    Err(AccessError::Refused { operation, code: code.into(), message })
}

/// A C string librdkafka owns, copied; empty for null.
///
/// # Safety
/// `text` must be null or NUL-terminated and live.
unsafe fn text(text: *const c_char) -> String {
    if text.is_null() {
        return String::new();
    }
    // SAFETY: the caller guarantees a live NUL-terminated string.
    unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
}

fn c_string(operation: &'static str, value: &str) -> Result<CString, AccessError> {
    CString::new(value)
        .map_err(|_| AccessError::Invalid { operation, message: format!("{value:?} holds a NUL byte") })
}

/// Owns a result queue.
struct Queue(*mut sys::rd_kafka_queue_t);

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: made by rd_kafka_queue_new, destroyed once; librdkafka
        // keeps its own reference while a request still uses it.
        unsafe { sys::rd_kafka_queue_destroy(self.0) }
    }
}

/// Owns admin options.
struct Options(*mut sys::rd_kafka_AdminOptions_t);

impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: made by rd_kafka_AdminOptions_new, destroyed once; the
        // request copied what it needed.
        unsafe { sys::rd_kafka_AdminOptions_destroy(self.0) }
    }
}

/// Owns a result event.
struct Event(*mut sys::rd_kafka_event_t);

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: returned by rd_kafka_queue_poll, destroyed once, after
        // everything read from it was copied.
        unsafe { sys::rd_kafka_event_destroy(self.0) }
    }
}

/// Owns one ACL binding or filter.
struct Binding(*mut sys::rd_kafka_AclBinding_t);

impl Binding {
    /// Hands the binding to a [`Bindings`] guard.
    fn take(self) -> *mut sys::rd_kafka_AclBinding_t {
        let pointer = self.0;
        std::mem::forget(self);
        pointer
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        // SAFETY: made by rd_kafka_AclBinding(Filter)_new, destroyed once.
        unsafe { sys::rd_kafka_AclBinding_destroy(self.0) }
    }
}

/// Owns ACL bindings or filters.
struct Bindings(Vec<*mut sys::rd_kafka_AclBinding_t>);

impl Drop for Bindings {
    fn drop(&mut self) {
        for binding in &self.0 {
            // SAFETY: each made by rd_kafka_AclBinding(Filter)_new, non-null
            // (checked when made), destroyed once.
            unsafe { sys::rd_kafka_AclBinding_destroy(*binding) }
        }
    }
}

/// Owns SCRAM alterations.
struct Alterations(Vec<*mut sys::rd_kafka_UserScramCredentialAlteration_t>);

impl Drop for Alterations {
    fn drop(&mut self) {
        for alteration in self.0.iter().filter(|a| !a.is_null()) {
            // SAFETY: each made by rd_kafka_UserScramCredential*_new,
            // destroyed once.
            unsafe { sys::rd_kafka_UserScramCredentialAlteration_destroy(*alteration) }
        }
    }
}
