//! The nftables mode's per-Service counters for `/metrics`, read from a listing of the
//! verdict maps, which grows with the Services (seconds of `nft` at 10,000 Services with nft
//! 1.0.6, which lists about 10,000 elements a second):
//! a scrape reads them at once while that is quick, and otherwise answers with the previous
//! reading while a new one is made in the background.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use skiff_node_proxy::nft::{self, NftCli, NftError, counters::PerService};

/// A listing slower than this is no longer made while a scrape waits.
const QUICK: Duration = Duration::from_secs(1);

/// One reading of the table's counters.
#[derive(Debug, Default, Clone)]
struct Reading {
    per_service: PerService,
    took: Duration,
}

#[derive(Debug)]
struct Shared {
    nft: NftCli,
    last: Mutex<Option<Reading>>,
    /// A background reading is under way.
    reading: AtomicBool,
}

impl Shared {
    fn read(&self) -> Result<Reading, NftError> {
        let started = Instant::now();
        let maps: Vec<String> = nft::rules::VERDICT_MAPS
            .map(nft::rules::MapName::name)
            .into();
        let per_service = nft::counters::per_service(&self.nft.list_maps(&maps)?);
        let reading = Reading {
            per_service,
            took: started.elapsed(),
        };
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(reading.clone());
        Ok(reading)
    }
}

/// The counters of the node's nftables table.
#[derive(Debug, Clone)]
pub struct NftCounters {
    shared: Arc<Shared>,
}

impl NftCounters {
    /// The counters of the table `nft` names.
    #[must_use]
    pub fn new(nft: NftCli) -> Self {
        Self {
            shared: Arc::new(Shared {
                nft,
                last: Mutex::new(None),
                reading: AtomicBool::new(false),
            }),
        }
    }

    /// Each Service's counters: read now when the last reading was quick, else the last
    /// reading (a new one starts in the background unless one is under way).
    ///
    /// # Errors
    /// When the table cannot be listed now.
    pub fn per_service(&self) -> Result<PerService, NftError> {
        let last = self
            .shared
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match last {
            Some(last) if last.took > QUICK => {
                if !self.shared.reading.swap(true, Ordering::SeqCst) {
                    let shared = self.shared.clone();
                    std::thread::spawn(move || {
                        if let Err(err) = shared.read() {
                            tracing::warn!(
                                "nftables counters not read: {:#}",
                                anyhow::Error::new(err)
                            );
                        }
                        shared.reading.store(false, Ordering::SeqCst);
                    });
                }
                Ok(last.per_service)
            }
            _ => Ok(self.shared.read()?.per_service),
        }
    }
}
