//! The chaos run's tables: per phase (and in total) what was sent and how it ended, latency,
//! how decisions were reached, why they failed open, and how many log lines each process wrote;
//! then the verdict, the events, and every lost request with what the client saw. The same
//! Markdown is printed and written to the report file.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::load::{Outcome, Record};

/// One table row: a phase's requests (by scheduled time) or all of them.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub label: String,
    /// How long the phase ran.
    pub secs: f64,
    pub sent: u64,
    pub ok: u64,
    pub lost: u64,
    pub retried: u64,
    pub cut: u64,
    pub aborted: u64,
    /// Of the complete 2xx answers.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Of the decisions that needed the classifier (classified, coalesced, cache_*, fail_open).
    pub classified: Option<f64>,
    pub cached: Option<f64>,
    pub fail_open: BTreeMap<String, u64>,
    pub sources: BTreeMap<String, u64>,
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

impl Row {
    pub fn of<'a>(label: &str, secs: f64, recs: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut r = Row {
            label: label.into(),
            secs,
            ..Row::default()
        };
        let mut lat = Vec::new();
        for x in recs {
            r.sent += 1;
            r.retried += u64::from(x.retried);
            match x.outcome {
                Outcome::Ok => {
                    r.ok += 1;
                    lat.extend(x.latency.map(|d| d.as_secs_f64() * 1000.0));
                }
                Outcome::Lost => r.lost += 1,
                Outcome::CutByBackend => r.cut += 1,
                Outcome::ClientAborted => r.aborted += 1,
            }
            if let Some(s) = &x.source {
                *r.sources.entry(s.clone()).or_default() += 1;
            }
            if x.source.as_deref() == Some("fail_open") || x.fail_reason.is_some() {
                let why = x
                    .fail_reason
                    .clone()
                    .unwrap_or_else(|| "(no reason)".into());
                *r.fail_open.entry(why).or_default() += 1;
            }
        }
        lat.sort_by(f64::total_cmp);
        r.p50_ms = percentile(&lat, 0.50);
        r.p99_ms = percentile(&lat, 0.99);
        let n = |k: &str| r.sources.get(k).copied().unwrap_or(0);
        let classified = n("classified") + n("coalesced");
        let cached = n("cache_local") + n("cache_redis");
        let needed = classified + cached + n("fail_open");
        if needed > 0 {
            r.classified = Some(classified as f64 / needed as f64);
            r.cached = Some(cached as f64 / needed as f64);
        }
        r
    }
}

impl Row {
    /// Decisions that did not need the classifier (no_text, explicit) and answers without a
    /// decision header ("none": the request failed before a decision was reported).
    pub fn other_sources(&self) -> BTreeMap<String, u64> {
        const NEEDED: [&str; 5] = [
            "classified",
            "coalesced",
            "cache_local",
            "cache_redis",
            "fail_open",
        ];
        let mut m: BTreeMap<String, u64> = self
            .sources
            .iter()
            .filter(|(k, _)| !NEEDED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let with_source: u64 = self.sources.values().sum();
        if self.sent > with_source {
            m.insert("none".into(), self.sent - with_source);
        }
        m
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.0} %", v * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn reasons(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The outcome table (phases, then the total).
pub fn outcome_table(rows: &[Row], total: &Row) -> String {
    let mut s = String::from(
        "| phase | s | sent | 2xx | lost | retried | cut by backend | client aborted | p50 ms | \
         p99 ms | classified | from cache | fail-open reasons | other decisions |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|\n",
    );
    for r in rows.iter().chain(std::iter::once(total)) {
        let bold = |v: String| {
            if std::ptr::eq(r, total) {
                format!("**{v}**")
            } else {
                v
            }
        };
        let _ = writeln!(
            s,
            "| {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            bold(r.label.clone()),
            r.secs,
            r.sent,
            r.ok,
            bold(r.lost.to_string()),
            r.retried,
            r.cut,
            r.aborted,
            ms(r.p50_ms),
            ms(r.p99_ms),
            pct(r.classified),
            pct(r.cached),
            reasons(&r.fail_open),
            reasons(&r.other_sources())
        );
    }
    s
}

/// Log lines per process per span (`rows`: label and one count per process).
pub fn log_table(names: &[String], rows: &[(String, Vec<u64>)]) -> String {
    let mut s = format!("| lines written during | {} |\n|---|", names.join(" | "));
    s.push_str(&"--:|".repeat(names.len()));
    s.push('\n');
    for (label, counts) in rows {
        let cells: Vec<String> = counts.iter().map(u64::to_string).collect();
        let _ = writeln!(s, "| {label} | {} |", cells.join(" | "));
    }
    s
}

/// Every lost request (at most `limit`), with what the client saw.
pub fn lost_table(records: &[Record], names: &[String], limit: usize) -> String {
    let lost: Vec<&Record> = records
        .iter()
        .filter(|r| r.outcome == Outcome::Lost)
        .collect();
    if lost.is_empty() {
        return "None.\n".into();
    }
    let mut s = String::from(
        "| # | phase | sent at s | replica | kind | retried | status | decision | model | backend | what the client saw |\n\
         |--:|--:|--:|---|---|---|--:|---|---|---|---|\n",
    );
    for r in lost.iter().take(limit) {
        let kind = match (r.stream, r.long) {
            (true, true) => "stream (long)",
            (true, false) => "stream",
            _ => "plain",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.seq,
            r.phase,
            r.at.as_secs_f64(),
            names.get(r.replica).map(String::as_str).unwrap_or("?"),
            kind,
            if r.retried { "yes" } else { "no" },
            r.status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            r.source.as_deref().unwrap_or("-"),
            r.model.as_deref().unwrap_or("-"),
            r.backend.as_deref().unwrap_or("-"),
            r.detail.replace('|', "/").replace('\n', " ")
        );
    }
    if lost.len() > limit {
        let _ = writeln!(s, "\n({} more not shown)", lost.len() - limit);
    }
    s
}

/// Today's date (UTC), `YYYY-MM-DD`, without a date library.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Howard Hinnant's civil_from_days.
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rec(outcome: Outcome, ms: u64, source: &str, reason: Option<&str>) -> Record {
        Record {
            seq: 0,
            phase: 0,
            at: Duration::ZERO,
            replica: 0,
            retried: false,
            stream: false,
            long: false,
            abort: false,
            unique: true,
            outcome,
            status: Some(200),
            latency: Some(Duration::from_millis(ms)),
            source: Some(source.into()),
            fail_reason: reason.map(str::to_string),
            model: None,
            backend: None,
            detail: String::new(),
        }
    }

    #[test]
    fn rows_count_outcomes_shares_and_percentiles() {
        let recs = vec![
            rec(Outcome::Ok, 10, "classified", None),
            rec(Outcome::Ok, 20, "cache_local", None),
            rec(Outcome::Ok, 30, "fail_open", Some("timeout")),
            rec(Outcome::Ok, 40, "coalesced", None),
            rec(Outcome::Lost, 1, "classified", None),
            rec(Outcome::CutByBackend, 1, "cache_redis", None),
        ];
        let r = Row::of("x", 1.0, &recs);
        assert_eq!((r.sent, r.ok, r.lost, r.cut), (6, 4, 1, 1));
        assert_eq!(r.p50_ms, Some(20.0));
        assert_eq!(r.p99_ms, Some(40.0));
        assert_eq!(r.classified, Some(3.0 / 6.0));
        assert_eq!(r.cached, Some(2.0 / 6.0));
        assert_eq!(r.fail_open.get("timeout"), Some(&1));
        assert!(outcome_table(std::slice::from_ref(&r), &r).contains("timeout 1"));
    }

    #[test]
    fn today_is_a_date() {
        let t = today();
        assert_eq!(t.len(), 10);
        assert!(t.starts_with("20"), "{t}");
    }
}
