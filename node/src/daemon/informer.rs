//! How the node's cluster-wide watches list: from the API server's watch cache, in one
//! answer, as kube-proxy's informers do.

use kube::runtime::watcher;

/// A watch whose lists ask for `resourceVersion=0` (any revision the API server's watch
/// cache holds, served from memory) with no page limit. Pages of 500 against the store cost a
/// node with 10,000 Services several seconds of listing before its first sync; what is
/// listed older than the newest revision is brought up to date by the watch that follows.
#[must_use]
pub fn cached_list() -> watcher::Config {
    let mut config = watcher::Config::default().any_semantic();
    config.page_size = None;
    config
}
