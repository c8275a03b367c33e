//! Shared rtnetlink plumbing: a connection bound to the calling thread's network namespace
//! and link lookups that treat "no such device" as absence rather than failure.

use futures::TryStreamExt as _;
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::Handle;

/// `ENODEV`, as netlink reports it for a link that does not exist.
const ENODEV: i32 = -libc::ENODEV;

/// Errors talking rtnetlink.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The netlink socket could not be opened.
    #[error("opening rtnetlink socket: {0}")]
    Connect(#[source] std::io::Error),
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Request {
        /// What was being done.
        what: String,
        /// The netlink error.
        source: rtnetlink::Error,
    },
}

impl LinkError {
    pub(super) fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Self {
        let what = what.into();
        move |source| Self::Request { what, source }
    }
}

/// Opens an rtnetlink connection in the calling thread's network namespace and drives it
/// on the current tokio runtime.
///
/// # Errors
/// If the socket cannot be opened.
pub(super) fn connect() -> Result<Handle, LinkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Connect)?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Whether a netlink error says the device does not exist.
pub(super) fn is_no_device(err: &rtnetlink::Error) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(m) if m.raw_code() == ENODEV)
}

/// The index of link `name`, if it exists.
///
/// # Errors
/// If the lookup fails for another reason than absence.
pub(super) async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, LinkError> {
    match handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(e) if is_no_device(&e) => Ok(None),
        Err(source) => Err(LinkError::Request {
            what: format!("looking up link {name}"),
            source,
        }),
    }
}

/// Deletes link `name` if it exists; returns whether it did. One request: the kernel
/// finds the link by name.
///
/// # Errors
/// If the deletion fails for another reason than absence.
pub(super) async fn delete(handle: &Handle, name: &str) -> Result<bool, LinkError> {
    let mut request = handle.link().del(0);
    request
        .message_mut()
        .attributes
        .push(LinkAttribute::IfName(name.to_owned()));
    match request.execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_no_device(&e) => Ok(false),
        Err(source) => Err(LinkError::Request {
            what: format!("deleting link {name}"),
            source,
        }),
    }
}
