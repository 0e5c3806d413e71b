//! Reads a finished vzdump task's log once, page by page, and keeps each guest's
//! verdict (`model::backup`) when the task is the newest that backed the guest up.

use std::sync::Arc;

use crate::model::{parse_vzdump_log, SlowData};
use crate::pve::{PveClient, PveError, Upid};

/// Lines per page; a job of 20 guests logs ~400 lines.
const PAGE: u64 = 500;
/// A log longer than this is read no further (hundreds of guests in one job).
const MAX_PAGES: u64 = 40;

pub(super) async fn read_verdicts(
    client: &PveClient,
    upid: &str,
    data: &mut SlowData,
) -> Result<(), PveError> {
    let upid: Upid = upid
        .parse()
        .map_err(|e: crate::pve::UpidParseError| PveError::Decode {
            endpoint: "vzdump task log".into(),
            message: e.to_string(),
        })?;
    let mut lines: Vec<String> = Vec::new();
    let mut start = 0;
    for _ in 0..MAX_PAGES {
        let page = client.task_log(&upid, start, PAGE).await?;
        let got = page.lines.len();
        lines.extend(page.lines.into_iter().map(|l| l.t.unwrap_or_default()));
        start = page.next_start;
        if got == 0 || start >= page.total {
            break;
        }
    }
    let task_start = upid.starttime;
    for (vmid, verdict) in parse_vzdump_log(lines.iter().map(String::as_str), task_start) {
        let old = data.backup_verdicts.get(&vmid);
        let newer = old.is_none_or(|old| old.task_start <= task_start);
        // The map is shared with the data last sent: copied only for news.
        if newer && old != Some(&verdict) {
            Arc::make_mut(&mut data.backup_verdicts).insert(vmid, verdict);
        }
    }
    Ok(())
}
