//! ResourceQuota: a quota's usage is the quota controller's to write, from empty.

use serde_json::Value;

use super::reset_status;
use crate::Strategy;

/// `v1/ResourceQuota`.
#[derive(Debug)]
pub struct ResourceQuota;

impl Strategy for ResourceQuota {
    fn prepare_for_create(&self, obj: &mut Value) {
        reset_status(obj);
    }
}
