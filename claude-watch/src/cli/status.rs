//! `claude-watch status`: the fleet as the running daemon sees it.

use std::path::PathBuf;

use crate::daemon::control::query_status;
use crate::daemon::status::{FleetStatus, IncidentStatus, InstanceView, Snapshot};
use crate::time::rfc3339_ms;

/// Show every claude instance: unit, pid, session, version, state, last answer, 401s in the
/// current episode, restarts and quiet window, like `systemctl status` for the fleet.
///
/// Examples:
///   claude-watch status
///   claude-watch status --json | jq 'select(.state == "latched")'
///   claude-watch status --config /etc/claude-watch/agents.toml   a daemon with its own config
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct StatusArgs {
    /// One JSON object per instance, one per line.
    #[arg(long)]
    pub json: bool,
    /// The daemon's control socket (default: the configuration's `[daemon] control_socket`).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The daemon's configuration, whose control socket is asked (default:
    /// /etc/claude-watch/config.toml when it exists, else the built-in one).
    #[arg(long, short, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// Prints the status.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let socket = match args.socket {
        Some(socket) => socket,
        None => {
            let (config, _) = crate::config::find(args.config.as_deref())?;
            config.daemon.control_socket
        }
    };
    let snapshot = query_status(&socket)?;
    if args.json {
        for instance in &snapshot.instances {
            println!("{}", serde_json::to_string(instance)?);
        }
    } else {
        print!("{}", render(&snapshot));
    }
    Ok(())
}

/// The human status screen.
pub fn render(s: &Snapshot) -> String {
    let mut out = format!(
        "claude-watch {} (pid {}), up {}, config {}{}\nprobes: {} attached, {} records, {} lost; {} exchanges seen\n\n",
        s.version,
        s.pid,
        ago(s.now_ms.saturating_sub(s.started_ms)),
        s.config,
        if s.dry_run {
            ", DRY RUN (no restarts)"
        } else {
            ""
        },
        s.capture.attachments,
        s.capture.sent,
        s.capture.lost,
        s.capture.exchanges
    );
    if s.capture.refused_attachments > 0 {
        // Replaces the blank line: the warning belongs to the probes line.
        out.pop();
        out.push_str(&format!(
            "  {} attachments refused (cap {}: [daemon] max_attachments)\n\n",
            s.capture.refused_attachments, s.capture.max_attachments
        ));
    }
    // Each replaces the blank line too.
    let mut dropped = |dropped: u64, whose: &str, who: Vec<String>| {
        if dropped > 0 {
            out.pop();
            out.push_str(&format!(
                "  {dropped} records dropped over {whose}{}{}\n\n",
                if who.is_empty() { "" } else { ": " },
                who.join(", ")
            ));
        }
    };
    let pids = s.capture.over_budget_pids.iter();
    dropped(
        s.capture.over_budget,
        "a process's budget",
        pids.map(|o| format!("pid {} ({} dropped)", o.pid, o.dropped))
            .collect(),
    );
    let users = s.capture.over_budget_users.iter();
    dropped(
        s.capture.over_user_budget,
        "a user's budget ([daemon] record_budget_per_user)",
        users
            .map(|o| format!("uid {} ({} dropped)", o.uid, o.dropped))
            .collect(),
    );
    if s.instances_refused > 0 {
        out.push_str(&format!(
            "refused: {} new instances, not watched (over {} tracked; see the log)\n\n",
            s.instances_refused,
            crate::watch::MAX_INSTANCES
        ));
    }
    if let Some(fleet) = &s.fleet {
        out.push_str(&crate::text::printable(&fleet_line(fleet, s.now_ms)));
        out.push_str("\n\n");
    }
    if let Some(incident) = &s.incident {
        out.push_str(&crate::text::printable(&incident_line(incident, s.now_ms)));
        out.push_str("\n\n");
    }
    if s.instances.is_empty() {
        out.push_str("no claude instances running\n");
        return out;
    }
    let header = [
        "INSTANCE",
        "PID",
        "SESSION",
        "VERSION",
        "STATE",
        "LAST",
        "401s",
        "RESTARTS",
        "BACKOFF",
        "SUPERVISOR",
    ];
    let rows: Vec<[String; 10]> = s.instances.iter().map(|i| row(i, s.now_ms)).collect();
    out.push_str(&super::columns(&header, &rows));
    // Why each supervisor was chosen, under the table (too long for a column).
    let reasons: Vec<(String, String)> = s
        .instances
        .iter()
        .filter(|i| !i.supervisor_reason.is_empty())
        .map(|i| {
            (
                crate::text::printable(&i.name).into_owned(),
                crate::text::printable(&i.supervisor_reason).into_owned(),
            )
        })
        .collect();
    if !reasons.is_empty() {
        let w = reasons
            .iter()
            .map(|(n, _)| n.chars().count())
            .max()
            .unwrap_or(0);
        out.push_str("\nsupervisors:\n");
        for (name, reason) in reasons {
            out.push_str(&format!("  {name:<w$}  {reason}\n"));
        }
    }
    // Recoveries since the daemon started: a restart that healed shows, not a bare 0.
    let recovered: Vec<String> = s
        .instances
        .iter()
        .filter_map(|i| {
            let at = i.last_recovery_ms?;
            let how = match i.last_recovery.as_deref() {
                Some("recovered_after_restart") => "recovered after a restart",
                _ => "recovered on its own",
            };
            Some(format!(
                "  {}  {how} at {} ({} ago); {} restart{} since the daemon started\n",
                crate::text::printable(&i.name),
                &rfc3339_ms(at)[11..19],
                ago(s.now_ms.saturating_sub(at)),
                i.restarts_total,
                if i.restarts_total == 1 { "" } else { "s" }
            ))
        })
        .collect();
    if !recovered.is_empty() {
        out.push_str("\nlast recovery:\n");
        out.push_str(&recovered.concat());
    }
    // Why the latest restart failed or was refused, until one succeeds.
    let failures: Vec<String> = s
        .instances
        .iter()
        .filter_map(|i| {
            Some(format!(
                "  {}  {}\n",
                crate::text::printable(&i.name),
                crate::text::printable(i.last_error.as_deref()?)
            ))
        })
        .collect();
    if !failures.is_empty() {
        out.push_str("\nlast restart failed:\n");
        out.push_str(&failures.concat());
    }
    let background: Vec<_> = s
        .instances
        .iter()
        .filter_map(|i| Some((i, i.background.as_ref()?)))
        .collect();
    if !background.is_empty() {
        out.push_str("\nbackground sessions (claude --bg):\n");
        for (i, bg) in background {
            let text = format!(
                "  {}  id {}  name {}  cwd {}",
                i.name,
                bg.short_id,
                bg.name.as_deref().unwrap_or("-"),
                bg.cwd.as_deref().unwrap_or("-")
            );
            out.push_str(&crate::text::printable(&text));
            out.push('\n');
            if let Some(advice) = &i.advice {
                out.push_str("    ");
                out.push_str(&crate::text::printable(advice));
                out.push('\n');
            }
        }
    }
    out
}

/// One table row; every cell escaped, since names, versions and reasons come from what the
/// observed processes say about themselves.
fn row(i: &InstanceView, now_ms: u64) -> [String; 10] {
    cells(i, now_ms).map(|c| crate::text::printable(&c).into_owned())
}

fn cells(i: &InstanceView, now_ms: u64) -> [String; 10] {
    let dash = || "-".to_owned();
    [
        i.name.clone(),
        if i.pids.is_empty() {
            dash()
        } else {
            i.pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        },
        i.session_id
            .as_deref()
            .map_or_else(dash, |s| s.chars().take(8).collect()),
        i.version.clone().unwrap_or_else(dash),
        match (i.state.as_str(), i.exited_ms) {
            ("exited", Some(at)) => format!("exited {} ago", ago(now_ms.saturating_sub(at))),
            _ => i.state_label(),
        },
        match (i.last_status, i.last_seen_ms) {
            (Some(status), Some(at)) => format!("{status} {} ago", ago(now_ms.saturating_sub(at))),
            _ => dash(),
        },
        i.window_401s.map_or_else(dash, |n| n.to_string()),
        if i.restarts_total > i.restarts {
            format!("{} ({} in all)", i.restarts, i.restarts_total)
        } else {
            i.restarts.to_string()
        },
        if i.fleet_hold {
            "fleet hold".to_owned()
        } else if i.canary {
            "canary".to_owned()
        } else {
            match (i.backoff_until_ms, &i.incident) {
                (Some(t), _) => format!("until {}", &rfc3339_ms(t)[11..19]),
                (None, Some(_)) => "after canary".to_owned(),
                (None, None) => dash(),
            }
        },
        i.supervisor.clone(),
    ]
}

/// The fleet's hold in one line: what Alertmanager said, when, and what this host does.
fn fleet_line(f: &FleetStatus, now_ms: u64) -> String {
    let clock = |ms: u64| rfc3339_ms(ms)[11..19].to_owned();
    let answered = match (&f.answered_by, f.last_answer_ms) {
        (Some(by), Some(at)) => format!("{by} answered {} ago", ago(now_ms.saturating_sub(at))),
        _ => "no answer yet".to_owned(),
    };
    let what = match f.state.as_str() {
        "held" => format!(
            "HELD: the incident alert ({}) fires since {}; no restart on this host while it does",
            f.alert,
            f.firing_since_ms.map_or_else(|| "-".to_owned(), clock)
        ),
        "resuming" => format!(
            "the incident alert resolved; this host's restarts resume at {} (its turn in the stagger)",
            f.resume_at_ms.map_or_else(|| "-".to_owned(), clock)
        ),
        "unreachable" => format!(
            "no Alertmanager answered ({}): recovering locally, restarts not held",
            f.error.as_deref().unwrap_or("no answer")
        ),
        "waiting" => {
            "waiting for Alertmanager's first answer (restarts held until it comes, or stale_after)"
                .to_owned()
        }
        _ => format!("clear: the incident alert ({}) does not fire", f.alert),
    };
    format!("fleet ({}): {what}; {answered}", f.host)
}

/// The host's upstream incident in one line: since when, who waits, the canary or the next try.
fn incident_line(i: &IncidentStatus, now_ms: u64) -> String {
    let clock = |ms: u64| rfc3339_ms(ms)[11..19].to_owned();
    let mut line = format!(
        "upstream incident since {} ({} ago): {} instances latched together, one canary restart per quiet window",
        clock(i.since_ms),
        ago(now_ms.saturating_sub(i.since_ms)),
        i.members.len()
    );
    match (&i.canary, i.next_try_ms) {
        (Some(canary), _) => line.push_str(&format!("; canary {canary} restarting")),
        (None, Some(next)) => line.push_str(&format!(
            "; next canary restart at {} (in {})",
            clock(next),
            ago(next.saturating_sub(now_ms))
        )),
        (None, None) => line.push_str("; next canary restart due"),
    }
    line.push_str(&format!("; {} tries did not heal", i.tries));
    if let Some(at) = i.escalated_ms {
        line.push_str(&format!(
            "; escalated at {} (one notice for all)",
            clock(at)
        ));
    }
    line
}

/// `3s`, `4m`, `2h05m`, `3d04h`.
fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::status::CaptureView;

    #[test]
    fn renders_a_fleet() {
        let s = Snapshot {
            version: "0.1.0".into(),
            pid: 7,
            started_ms: 1_000,
            now_ms: 3_601_000,
            dry_run: false,
            config: "<built-in>".into(),
            instances_refused: 0,
            incident: None,
            fleet: None,
            capture: CaptureView {
                attachments: 2,
                sent: 10,
                lost: 0,
                exchanges: 5,
                ..CaptureView::default()
            },
            instances: vec![
                InstanceView {
                    name: "agent-a.service".into(),
                    unit: Some("agent-a.service".into()),
                    pids: vec![42],
                    session_id: Some("1b6f8a1e-44f3".into()),
                    version: Some("2.1.331".into()),
                    state: "latched".into(),
                    last_status: Some(401),
                    last_seen_ms: Some(3_598_000),
                    window_401s: Some(4),
                    restarts: 1,
                    supervisor: "systemd".into(),
                    supervisor_reason:
                        "auto → systemd (unit agent-a.service in the system manager)".into(),
                    last_error: Some("refused: the system manager says pid 42 belongs to x.service, not to agent-a.service\x1b[2J".into()),
                    ..InstanceView::default()
                },
                InstanceView {
                    name: "pid:99".into(),
                    pids: vec![99],
                    state: "healthy".into(),
                    throttled: vec!["claude-opus-4-8".into()],
                    tier_throttle: true,
                    supervisor: "observe".into(),
                    ..InstanceView::default()
                },
            ],
        };
        let text = render(&s);
        assert!(text.contains("up 1h00m"), "{text}");
        assert!(
            text.contains("agent-a.service  42   1b6f8a1e  2.1.331  latched"),
            "{text}"
        );
        assert!(text.contains("401 3s ago  4"), "{text}");
        assert!(
            text.contains("healthy tier-throttled(claude-opus-4-8)"),
            "{text}"
        );
        assert!(
            text.contains(
                "supervisors:\n  agent-a.service  auto → systemd (unit agent-a.service in the system manager)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("last restart failed:\n  agent-a.service  refused: the system manager says pid 42 belongs to x.service, not to agent-a.service\\u{1b}[2J"),
            "{text}"
        );
    }

    #[test]
    fn renders_the_incident_and_who_waits_for_its_canary() {
        let member = |name: &str, canary: bool| InstanceView {
            name: name.into(),
            pids: vec![1],
            state: "latched".into(),
            incident: Some("incident@1000".into()),
            canary,
            supervisor: "systemd".into(),
            ..InstanceView::default()
        };
        let mut s = Snapshot {
            now_ms: 121_000,
            incident: Some(IncidentStatus {
                id: "incident@1000".into(),
                since_ms: 1_000,
                members: vec!["a.service".into(), "b.service".into()],
                canary: Some("a.service".into()),
                tries: 2,
                next_try_ms: None,
                escalated_ms: None,
            }),
            instances: vec![member("a.service", true), member("b.service", false)],
            ..Snapshot::default()
        };
        let text = render(&s);
        assert!(
            text.contains("upstream incident since 00:00:01 (2m ago): 2 instances latched together, one canary restart per quiet window; canary a.service restarting; 2 tries did not heal\n"),
            "{text}"
        );
        assert!(text.contains("canary        systemd"), "{text}");
        assert!(text.contains("after canary  systemd"), "{text}");
        let incident = s.incident.as_mut().unwrap();
        incident.canary = None;
        incident.next_try_ms = Some(181_000);
        incident.escalated_ms = Some(100_000);
        let text = render(&s);
        assert!(
            text.contains("; next canary restart at 00:03:01 (in 1m); 2 tries did not heal; escalated at 00:01:40 (one notice for all)"),
            "{text}"
        );
    }

    #[test]
    fn renders_the_fleets_hold() {
        let mut s = Snapshot {
            now_ms: 61_000,
            fleet: Some(FleetStatus {
                host: "host-a".into(),
                state: "held".into(),
                alert: "alertname=\"ClaudeFleetUpstreamIncident\"".into(),
                firing_since_ms: Some(1_000),
                last_answer_ms: Some(60_000),
                answered_by: Some("http://am:9093".into()),
                ..FleetStatus::default()
            }),
            instances: vec![InstanceView {
                name: "a.service".into(),
                pids: vec![1],
                state: "latched".into(),
                fleet_hold: true,
                supervisor: "systemd".into(),
                ..InstanceView::default()
            }],
            ..Snapshot::default()
        };
        let text = render(&s);
        assert!(
            text.contains("fleet (host-a): HELD: the incident alert (alertname=\"ClaudeFleetUpstreamIncident\") fires since 00:00:01; no restart on this host while it does; http://am:9093 answered 1s ago\n"),
            "{text}"
        );
        assert!(text.contains("fleet hold  systemd"), "{text}");
        let f = s.fleet.as_mut().unwrap();
        f.state = "unreachable".into();
        f.error = Some("http://am:9093: connect".into());
        let text = render(&s);
        assert!(
            text.contains("no Alertmanager answered (http://am:9093: connect): recovering locally, restarts not held"),
            "{text}"
        );
    }

    #[test]
    fn observed_text_is_escaped_and_unobserved_says_why() {
        let s = Snapshot {
            instances: vec![
                InstanceView {
                    name: "docker:x\x1b[2J".into(),
                    version: Some("2.1.332\nforged".into()),
                    state: "healthy".into(),
                    supervisor: "observe".into(),
                    ..InstanceView::default()
                },
                InstanceView {
                    name: "pid:7".into(),
                    pids: vec![7],
                    state: "observed".into(),
                    unobserved: Some("/opt/claude: no TLS library found".into()),
                    supervisor: "observe".into(),
                    ..InstanceView::default()
                },
            ],
            ..Snapshot::default()
        };
        let text = render(&s);
        assert!(
            !text.contains('\x1b') && text.contains("docker:x\\u{1b}[2J"),
            "{text}"
        );
        assert!(text.contains("2.1.332\\nforged"), "{text}");
        assert!(
            text.contains("unobserved (/opt/claude: no TLS library found)"),
            "{text}"
        );
    }
}
