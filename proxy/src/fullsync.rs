//! A full sync that `nft` does not have to parse element by element.
//!
//! The next table is built beside the live one, under hull's other table name,
//! and swapped in by one transaction:
//!
//! ```text
//! 1. nft -f   add+delete table NEXT; table NEXT { maps, sets, chains }   (no hooks: no packet sees it)
//! 2. netlink  the map and set elements of NEXT                           (batches of NFT_MSG_NEWSETELEM)
//! 3. nft -f   delete table LIVE; add chain NEXT nat-prerouting { type nat hook … }; …
//! ```
//!
//! A packet meets either the old table (before step 3 commits) or the new one,
//! never a half-filled one. If any step fails, the live table is untouched and
//! NEXT (hookless) is removed. The two names are `hull-proxy` and `hull-proxy-b`;
//! which one is live is read from the kernel (the hook chains) when not known.

use std::collections::BTreeSet;
use std::process::Command;

use crate::apply::{self, ApplyError};
use crate::netlink::{Data, ElemKey, Loader};
use crate::nft::{self, Family, HAIRPIN, MAPS, Part, State};

/// hull's table names (in both families); the proxy uses one at a time.
pub const TABLES: [&str; 2] = [nft::TABLE, "hull-proxy-b"];

/// The other table name.
pub fn other(table: &str) -> &'static str {
    if table == TABLES[0] {
        TABLES[1]
    } else {
        TABLES[0]
    }
}

/// hull's tables of family `f` that exist, and which of them hook into the
/// kernel (`nft list chains`: declarations only, no rules or elements).
pub fn tables(f: Family) -> Result<(BTreeSet<&'static str>, BTreeSet<&'static str>), ApplyError> {
    let bin = apply::nft_bin();
    let out = Command::new(&bin)
        .args(["list", "chains", f.table_family()])
        .output()
        .map_err(|source| ApplyError::Spawn { bin, source })?;
    if !out.status.success() {
        return Err(ApplyError::Refused {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut exist, mut hooked) = (BTreeSet::new(), BTreeSet::new());
    let mut current = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("table ") {
            let name = rest.split_whitespace().nth(1).unwrap_or_default();
            current = TABLES.iter().copied().find(|t| *t == name);
            exist.extend(current);
        } else if line.starts_with("type ") && line.contains(" hook ") {
            hooked.extend(current);
        }
    }
    Ok((exist, hooked))
}

/// The hull table of family `f` that packets go through now, if any.
pub fn live_table(f: Family) -> Result<Option<&'static str>, ApplyError> {
    let (exist, hooked) = tables(f)?;
    Ok(hooked.first().or(exist.first()).copied())
}

/// Replace hull's rules by `state` (both families) and record the table it now
/// lives in; `live`: the table the kernel holds now, when known.
pub fn apply(state: &mut State, live: Option<&'static str>) -> Result<(), ApplyError> {
    let live = match live {
        Some(t) => Some(t),
        None => live_table(Family::V4)?,
    };
    let next = other(live.unwrap_or(TABLES[1]));
    state.table = next;
    apply::nft_apply(&state.render(Part::Skeleton))?;
    let loaded = load_elements(state).and_then(|()| {
        let mut swap = String::new();
        for f in [Family::V4, Family::V6] {
            let t = f.table_family();
            for old in TABLES.iter().filter(|n| **n != next) {
                swap.push_str(&format!("add table {t} {old}\ndelete table {t} {old}\n"));
            }
            nft::render_hooks(&mut swap, f, next);
        }
        apply::nft_apply(&swap)
    });
    if loaded.is_err() {
        // Hookless, so harmless, but not to be left behind.
        let mut drop = String::new();
        for f in [Family::V4, Family::V6] {
            let t = f.table_family();
            drop.push_str(&format!("add table {t} {next}\ndelete table {t} {next}\n"));
        }
        if let Err(e) = apply::nft_apply(&drop) {
            tracing::warn!("removing the unfinished table {next}: {e}");
        }
    }
    loaded
}

fn load_elements(state: &State) -> Result<(), ApplyError> {
    let mut l = Loader::new()?;
    for f in [Family::V4, Family::V6] {
        let e = state.elements(f);
        let table = state.table;
        for (name, m) in MAPS.iter().zip(&e.maps) {
            l.add(
                f,
                table,
                name,
                m.iter().map(|(k, v)| (ElemKey::Key(k), Data::Verdict(v))),
            )?;
        }
        for (sl, m) in &e.slots {
            l.add(
                f,
                table,
                &sl.map(),
                m.iter().map(|(k, v)| (ElemKey::Key(k), Data::Dest(v))),
            )?;
        }
        l.add(
            f,
            table,
            HAIRPIN,
            e.hairpin.iter().map(|ip| (ElemKey::Pair(*ip), Data::None)),
        )?;
    }
    l.flush()?;
    Ok(())
}
