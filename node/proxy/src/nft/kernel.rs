//! The privileged boundary of the nftables mode: one JSON transaction in, the table read
//! back as JSON, both through the `nftables` crate's helpers (which run `nft -j`), so the
//! bookkeeping above is unit-tested without a kernel.

use serde_json::{Value, json};

/// Failures talking to nftables.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` refused the transaction or could not be run.
    #[error("nftables table {table}")]
    Nft {
        /// The table.
        table: String,
        /// The cause.
        #[source]
        source: nftables::helper::NftablesError,
    },
    /// `nft` answered JSON that does not parse.
    #[error("nftables table {table}: unreadable listing")]
    Json {
        /// The table.
        table: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Applying transactions and reading the table.
pub trait Nft {
    /// Applies `commands` (nft JSON commands) as one transaction: all or nothing.
    ///
    /// # Errors
    /// When the kernel refuses any of it.
    fn apply(&mut self, commands: &[Value]) -> Result<(), NftError>;

    /// The table's objects (the `nftables` array of `nft -j list table`), `None` when there
    /// is no such table.
    ///
    /// # Errors
    /// When it cannot be listed.
    fn list(&self) -> Result<Option<Vec<Value>>, NftError>;

    /// Deletes the table (absent is fine).
    ///
    /// # Errors
    /// When the kernel refuses.
    fn delete_table(&mut self) -> Result<(), NftError>;
}

/// The node's real table through `nft`.
#[derive(Debug, Clone)]
pub struct NftCli {
    table: String,
}

impl NftCli {
    /// The table `ip <table>` in the current network namespace.
    #[must_use]
    pub fn new(table: &str) -> Self {
        Self {
            table: table.to_owned(),
        }
    }

    /// The objects of `nft -j list map` for each of `maps` (the counters read these only:
    /// listing the whole table also lists every endpoint element).
    ///
    /// # Errors
    /// When one cannot be listed.
    pub fn list_maps(&self, maps: &[String]) -> Result<Vec<Value>, NftError> {
        let mut out = Vec::new();
        for map in maps {
            let raw = nftables::helper::get_current_ruleset_raw(
                nftables::helper::DEFAULT_NFT,
                ["list", "map", "ip", self.table.as_str(), map.as_str()],
            )
            .map_err(|e| self.nft_error(e))?;
            let mut listing: Value =
                serde_json::from_str(&raw).map_err(|source| NftError::Json {
                    table: self.table.clone(),
                    source,
                })?;
            if let Value::Array(objects) = listing["nftables"].take() {
                out.extend(objects);
            }
        }
        Ok(out)
    }

    /// Whether the table is there.
    ///
    /// # Errors
    /// When the chains cannot be listed.
    pub fn exists(&self) -> Result<bool, NftError> {
        // Asked by its chains: nft 1.0.6 fills its cache with every element of every set
        // for any other listing, `list tables` included (seconds at 10,000 Services), but
        // not for `list chains`. The table always holds its base chains.
        let chains = nftables::helper::get_current_ruleset_raw(
            nftables::helper::DEFAULT_NFT,
            ["list", "chains", "ip"],
        )
        .map_err(|e| self.nft_error(e))?;
        let chains: Value = serde_json::from_str(&chains).map_err(|source| NftError::Json {
            table: self.table.clone(),
            source,
        })?;
        Ok(chains["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["chain"]["table"] == self.table.as_str()))
    }

    fn nft_error(&self, source: nftables::helper::NftablesError) -> NftError {
        NftError::Nft {
            table: self.table.clone(),
            source,
        }
    }
}

impl Nft for NftCli {
    fn apply(&mut self, commands: &[Value]) -> Result<(), NftError> {
        if commands.is_empty() {
            return Ok(());
        }
        let payload = json!({"nftables": commands}).to_string();
        nftables::helper::apply_ruleset_raw(&payload, nftables::helper::DEFAULT_NFT, [""; 0])
            .map(drop)
            .map_err(|e| self.nft_error(e))
    }

    fn list(&self) -> Result<Option<Vec<Value>>, NftError> {
        if !self.exists()? {
            return Ok(None);
        }
        let raw = nftables::helper::get_current_ruleset_raw(
            nftables::helper::DEFAULT_NFT,
            ["list", "table", "ip", self.table.as_str()],
        )
        .map_err(|e| self.nft_error(e))?;
        let mut listing: Value = serde_json::from_str(&raw).map_err(|source| NftError::Json {
            table: self.table.clone(),
            source,
        })?;
        Ok(Some(match listing["nftables"].take() {
            Value::Array(objects) => objects,
            _ => Vec::new(),
        }))
    }

    fn delete_table(&mut self) -> Result<(), NftError> {
        // Adding first makes the deletion succeed whether or not the table existed.
        let table = json!({"family": "ip", "name": self.table});
        self.apply(&[
            json!({"add": {"table": table}}),
            json!({"delete": {"table": table}}),
        ])
    }
}
