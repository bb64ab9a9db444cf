//! Services in the datapath's maps: `SERVICES` (virtual address, port, protocol -> id and slot
//! count) and `BACKENDS` ((id, slot) -> backend). [`reconcile`] brings the maps to a wanted set by
//! difference: untouched services keep their entries, a changed service gets its new slots under
//! a fresh id and is switched over with one map update (a connect() sees either the old backends
//! or the new ones, never a mix, and a removed backend gets no new connection from that moment),
//! a removed service goes away before its slots do.
use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{HashMap, Map, MapData};
use mesh_common::{BACKENDS_MAP, Backend, BackendKey, SERVICES_MAP, ServiceKey, ServiceValue};
use serde::Serialize;

use crate::MeshError;

/// What [`reconcile`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
}

impl Applied {
    /// Nothing was written.
    pub fn is_noop(&self) -> bool {
        self.added == 0 && self.changed == 0 && self.removed == 0
    }
}

type Services<'a> = HashMap<&'a mut MapData, ServiceKey, ServiceValue>;
type Backends<'a> = HashMap<&'a mut MapData, BackendKey, Backend>;

// ANCHOR: reconcile
/// Makes the maps hold exactly `wanted` (each service with its backend slots, weights already
/// expanded into repeated slots).
pub fn reconcile(
    services: &mut Map,
    backends: &mut Map,
    wanted: &BTreeMap<ServiceKey, Vec<Backend>>,
) -> Result<Applied, MeshError> {
    let err = |map: &'static str| move |source| MeshError::Map { map, source };
    let mut services: Services = services.try_into().map_err(err(SERVICES_MAP))?;
    let mut backends: Backends = backends.try_into().map_err(err(BACKENDS_MAP))?;

    let current: BTreeMap<ServiceKey, ServiceValue> =
        services.iter().collect::<Result<Vec<_>, _>>().map_err(err(SERVICES_MAP))?.into_iter().collect();
    let mut used: BTreeSet<u32> = current.values().map(|v| v.id).collect();
    // The lowest unused ids, found with a cursor that only moves forward (10,000 services must
    // not mean 10,000 scans from 1).
    let mut cursor = 1u32;
    let mut fresh_id = || {
        while used.contains(&cursor) {
            cursor += 1;
        }
        used.insert(cursor);
        cursor
    };
    let mut out = Applied::default();
    for (key, slots) in wanted {
        let old = current.get(key);
        if let Some(v) = old {
            let same = v.slots as usize == slots.len()
                && (0..v.slots).zip(slots).all(|(slot, b)| {
                    backends.get(&BackendKey { service: v.id, slot }, 0).is_ok_and(|have| have == *b)
                });
            if same {
                out.unchanged += 1;
                continue;
            }
        }
        let id = fresh_id();
        for (slot, b) in slots.iter().enumerate() {
            backends
                .insert(BackendKey { service: id, slot: slot as u32 }, *b, 0)
                .map_err(err(BACKENDS_MAP))?;
        }
        // The switch: one update of one entry.
        services
            .insert(*key, ServiceValue { id, slots: slots.len() as u32 }, 0)
            .map_err(err(SERVICES_MAP))?;
        if let Some(v) = old {
            remove_slots(&mut backends, *v)?;
            out.changed += 1;
        } else {
            out.added += 1;
        }
    }
    for (key, v) in &current {
        if !wanted.contains_key(key) {
            services.remove(key).map_err(err(SERVICES_MAP))?;
            remove_slots(&mut backends, *v)?;
            out.removed += 1;
        }
    }
    Ok(out)
}
// ANCHOR_END: reconcile

fn remove_slots(backends: &mut Backends, v: ServiceValue) -> Result<(), MeshError> {
    for slot in 0..v.slots {
        backends
            .remove(&BackendKey { service: v.id, slot })
            .map_err(|source| MeshError::Map { map: BACKENDS_MAP, source })?;
    }
    Ok(())
}
