//! `claude-watch episodes --import`, `--format markdown` and `--svg`, on transcripts the real
//! Claude Code wrote (`tests/fixtures/transcripts`, made by its `make.py` against the stand-in).
//!
//! The fixtures, one project directory (instance) each:
//! - `fleet-a` (2.1.331): a latch that self-recovers, then an Opus throttle;
//! - `fleet-b` (2.1.331): a latch, the process exits, a `--resume`d process recovers;
//! - `fleet-c` (2.1.197): a latch healed by a fresh session, then a latch never recovered;
//! - `fleet-idle` (2.1.331, timestamps SHIFTED 2 h from the latching turn on): an idle-wake latch.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use claude_watch::detect::{Episode, EpisodeEnd, EpisodeSource};
use claude_watch::journal::{ActionKind, Record, ThrottleRecord};
use claude_watch_tests::deps::{assets_dir, find_on_path};
use claude_watch_tests::process::ScratchDir;
use claude_watch_tests::watch::bin;
use serde_json::Value;

fn fixtures() -> PathBuf {
    assets_dir().join("fixtures/transcripts/projects")
}

/// A copy of the fixtures (so a test can damage them).
fn fixture_copy(dir: &Path) -> PathBuf {
    let dst = dir.join("projects");
    for project in std::fs::read_dir(fixtures()).expect("fixtures exist") {
        let project = project.unwrap().path();
        let to = dst.join(project.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&project).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    dst
}

#[track_caller]
fn episodes_cmd(args: &[&str], tz: &str) -> Output {
    // The built-in thresholds, whatever /etc/claude-watch/config.toml says (an empty file is
    // the built-in configuration).
    let config = std::env::temp_dir().join("cw-history-builtin-config.toml");
    std::fs::write(&config, "").unwrap();
    let mut command = Command::new(bin());
    command.arg("episodes").args(args);
    if args.contains(&"--import") {
        command.arg("--config").arg(&config);
    }
    let out = command
        .env("TZ", tz)
        .env_remove("CLAUDE_WATCH_JOURNAL")
        .output()
        .expect("run claude-watch episodes");
    assert!(
        out.status.success(),
        "claude-watch episodes {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The request ids of the 401 answers in a project's files, read here independently of the
/// importer: `system/api_error` lines and turn-ending `isApiErrorMessage` lines.
fn request_ids_401(project_suffix: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(project_suffix))
        .collect();
    dirs.sort();
    for d in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            for line in std::fs::read_to_string(&f).unwrap().lines() {
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                if v["subtype"] == "api_error" && v["error"]["status"] == 401 {
                    ids.push(v["error"]["requestId"].as_str().unwrap().to_owned());
                } else if v["isApiErrorMessage"] == true && v["apiErrorStatus"] == 401 {
                    ids.push(v["requestId"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    ids
}

/// Every record of the journal, as the library reads it; each line must be one.
fn journal_records(journal: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(journal).expect("journal written");
    let records = claude_watch::journal::read_records(journal).expect("journal readable");
    assert_eq!(
        records.len(),
        text.lines().count(),
        "every journal line is a record:\n{text}"
    );
    records
}

/// Every episode snapshot in the journal.
fn journal_episodes(journal: &Path) -> Vec<Episode> {
    journal_records(journal)
        .into_iter()
        .filter_map(|r| match r {
            Record::Episode { episode, .. } => Some(episode),
            Record::Action(_) | Record::Throttle(_) | Record::Incident(_) => None,
        })
        .collect()
}

fn of<'a>(eps: &'a [Episode], instance: &str) -> Vec<&'a Episode> {
    let mut v: Vec<&Episode> = eps.iter().filter(|e| e.instance == instance).collect();
    v.sort_by_key(|e| e.first_401_ms);
    v
}

#[test]
fn imports_the_real_transcripts() {
    let dir = ScratchDir::new("cw-history-import");
    let journal = dir.path().join("journal.jsonl");
    let projects = fixture_copy(dir.path());
    let j = journal.to_str().unwrap();
    let out = episodes_cmd(
        &[
            "--journal",
            j,
            "--import",
            projects.to_str().unwrap(),
            "--json",
        ],
        "UTC",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("5 episodes added"), "{stderr}");
    assert!(
        stderr.contains("0 malformed, 0 truncated, 0 from unknown versions"),
        "{stderr}"
    );
    let eps = journal_episodes(&journal);
    assert_eq!(eps.len(), 5, "{eps:#?}");
    assert!(eps.iter().all(|e| e.source == EpisodeSource::Transcript));
    assert!(
        eps.iter().all(|e| e.end != EpisodeEnd::StillOpen),
        "history never leaves an episode open"
    );

    // fleet-a: a latch of one failed turn (6 × 401 with CLAUDE_CODE_MAX_RETRIES=5) that healed
    // on the same session without a restart.
    let a = of(&eps, "fleet-a");
    assert_eq!(a.len(), 1, "{a:#?}");
    assert_eq!(a[0].end, EpisodeEnd::SelfRecovered);
    assert_eq!(a[0].restarts, 0);
    assert_eq!(a[0].count_401, 6);
    assert_eq!(a[0].client_version.as_deref(), Some("2.1.331"));
    let ids_a = request_ids_401("fleet-a");
    assert_eq!(ids_a.len(), 6);
    assert_eq!(a[0].first_request_ids, ids_a[..5]);
    assert_eq!(a[0].last_request_ids[4], ids_a[5]);
    assert!(a[0].idle_before_ms.unwrap() < 3_600_000, "mid-use");

    // fleet-b: the process exited latched; a --resume'd process (same session) recovered.
    let b = of(&eps, "fleet-b");
    assert_eq!(b.len(), 1, "{b:#?}");
    assert_eq!(b[0].end, EpisodeEnd::RecoveredAfterRestart);
    assert_eq!(b[0].restarts, 1);
    assert_eq!(b[0].session_ids.len(), 1);

    // fleet-c (2.1.197, which logs only turn-ending errors): healed by a fresh session, then
    // latched again and never recovered.
    let c = of(&eps, "fleet-c");
    assert_eq!(c.len(), 2, "{c:#?}");
    assert_eq!(c[0].end, EpisodeEnd::RecoveredAfterRestart);
    assert_eq!(c[0].restarts, 1);
    assert_eq!(c[1].end, EpisodeEnd::ProcessExited);
    assert_eq!(c[0].client_version.as_deref(), Some("2.1.197"));
    assert_ne!(c[0].session_ids, c[1].session_ids);
    // Each latch: a turn whose 5 retries 2.1.197 wrote late (when the next turn started) plus
    // its final error, then a turn whose retries were never written (the process exited): its
    // final error and its inferred first attempt. 8 × 401 per episode, 14 request ids in all.
    let ids_c: BTreeSet<String> = request_ids_401("fleet-c").into_iter().collect();
    assert_eq!(ids_c.len(), 14);
    assert_eq!(c[0].count_401, 8);
    assert_eq!(c[1].count_401, 8);
    for e in &c {
        for id in &e.first_request_ids {
            assert!(ids_c.contains(id), "{id}");
        }
    }

    // fleet-idle: SHIFTED fixture, 2 h idle before the latching turn: idle-wake.
    let idle = of(&eps, "fleet-idle");
    assert_eq!(idle.len(), 1, "{idle:#?}");
    assert!(idle[0].idle_before_ms.unwrap() > 3_600_000);
    assert_eq!(idle[0].end, EpisodeEnd::SelfRecovered);

    // The report counts them so.
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["windows"], 5);
    assert_eq!(report["idle_wake"]["episodes"], 1);
    assert_eq!(report["mid_use"]["episodes"], 4);
    assert_eq!(report["sources"]["transcript"], 5);
    assert_eq!(report["versions"]["2.1.331"], 3);
    assert_eq!(report["versions"]["2.1.197"], 2);
    assert_eq!(report["ends"]["self_recovered"], 2);
    assert_eq!(report["ends"]["recovered_after_restart"], 2);
    assert_eq!(report["ends"]["process_exited"], 1);

    // The Opus throttle of fleet-a, and the restarts.
    let records = journal_records(&journal);
    let throttles: Vec<&ThrottleRecord> = records
        .iter()
        .filter_map(|r| match r {
            Record::Throttle(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(throttles.len(), 1, "{throttles:#?}");
    assert_eq!(throttles[0].instance, "fleet-a");
    assert!(throttles[0].model.starts_with("claude-opus"));
    assert_eq!(throttles[0].count_429, 6);
    assert!(throttles[0].ended_ms.is_some(), "opus answered again");
    let restarts = records
        .iter()
        .filter(|r| matches!(r, Record::Action(a) if a.kind == ActionKind::Restart))
        .count();
    assert_eq!(restarts, 2);

    // Nothing but the journal's own fields: no prompt, answer, path or key.
    let text = std::fs::read_to_string(&journal).unwrap();
    for needle in [
        "turn 1",
        "Hello from the stand-in",
        "/tmp/cw-transcript-fixtures",
        "sk-ant",
    ] {
        assert!(!text.contains(needle), "journal holds {needle:?}");
    }

    // Importing again adds nothing.
    let again = episodes_cmd(
        &["--journal", j, "--import", projects.to_str().unwrap()],
        "UTC",
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("0 episodes added, 0 already seen live, 5 already imported; 0 throttles and 0 restarts added"),
        "{stderr}"
    );
    assert_eq!(journal_episodes(&journal).len(), 5);
}

#[test]
fn live_episodes_are_not_imported_twice_and_bad_lines_are_counted() {
    let dir = ScratchDir::new("cw-history-dedup");
    let journal = dir.path().join("journal.jsonl");
    let projects = fixture_copy(dir.path());
    // The daemon saw fleet-b's latch live: its episode (an old-format line, no `source`)
    // carries one of the request ids the transcript holds.
    let id = &request_ids_401("fleet-b")[2];
    let live = format!(
        r#"{{"record":"episode","at_ms":1,"episode":{{"id":"agent-b.service@1","instance":"agent-b.service","unit":"agent-b.service","pids":[42],"session_ids":["elsewhere"],"models":[],"first_401_ms":1,"last_401_ms":2,"first_401_mono_ns":0,"last_401_mono_ns":0,"count_401":3,"first_request_ids":["{id}"],"last_request_ids":[],"idle_before_ms":null,"restarts":1,"end":"recovered_after_restart","ended_ms":3,"time_to_recovery_ms":5}}}}"#
    );
    std::fs::write(&journal, format!("{live}\n")).unwrap();
    // Damage a transcript: garbage, an unknown version, a cut-off last line.
    let b_dir = std::fs::read_dir(&projects)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("fleet-a"))
        .unwrap();
    let file = std::fs::read_dir(&b_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut text = std::fs::read_to_string(&file).unwrap();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("this is not json\n");
    text.push_str(r#"{"type":"system","subtype":"api_error","error":{"status":401,"requestId":"req_future"},"timestamp":"2026-11-30T09:00:00.000Z","sessionId":"s","version":"7.0.0"}"#);
    text.push('\n');
    text.push_str(r#"{"type":"assistant","requestId":"req_cut"#);
    std::fs::write(&file, text).unwrap();

    let out = episodes_cmd(
        &[
            "--journal",
            journal.to_str().unwrap(),
            "--import",
            dir.path().to_str().unwrap(),
        ],
        "UTC",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("4 episodes added, 1 already seen live, 0 already imported"),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 malformed, 1 truncated, 1 from unknown versions"),
        "{stderr}"
    );
    let eps = journal_episodes(&journal);
    assert_eq!(eps.len(), 5);
    assert!(of(&eps, "fleet-b").is_empty());
    assert_eq!(of(&eps, "agent-b.service").len(), 1);
}

/// A journal with one live episode (its own instance, a day before) and the imported fixtures.
fn live_and_imported(dir: &Path) -> PathBuf {
    let journal = dir.join("journal.jsonl");
    let live = r#"{"record":"episode","at_ms":1,"episode":{"id":"reviewer.service@1764400000000","instance":"reviewer.service","unit":"reviewer.service","pids":[42],"session_ids":["live-session"],"models":["claude-opus-4-8"],"first_401_ms":1796000000000,"last_401_ms":1796000017000,"first_401_mono_ns":0,"last_401_mono_ns":0,"count_401":6,"first_request_ids":["req_011CLiveAAAAAAAAAAAAAAAA"],"last_request_ids":["req_011CLiveAAAAAAAAAAAAAAAA","req_011CLiveBBBBBBBBBBBBBBBB"],"idle_before_ms":2000,"restarts":1,"end":"recovered_after_restart","ended_ms":1796000030000,"time_to_recovery_ms":900,"client_version":"2.1.332"}}"#;
    let restart = r#"{"record":"action","at_ms":1796000020000,"instance":"reviewer.service","episode_id":"reviewer.service@1764400000000","kind":"restart","ok":true,"until_ms":null,"detail":"systemd"}"#;
    std::fs::write(&journal, format!("{live}\n{restart}\n")).unwrap();
    episodes_cmd(
        &[
            "--journal",
            journal.to_str().unwrap(),
            "--import",
            fixtures().to_str().unwrap(),
        ],
        "UTC",
    );
    journal
}

#[test]
fn markdown_report_of_live_and_imported_episodes() {
    let dir = ScratchDir::new("cw-history-md");
    let journal = live_and_imported(dir.path());
    let j = journal.to_str().unwrap();
    // CST+6: a fixed UTC-06:00 zone named CST, without tz data.
    let md =
        String::from_utf8(episodes_cmd(&["--journal", j, "--format", "markdown"], "CST+6").stdout)
            .unwrap();
    for heading in [
        "# Claude Code 401 latch episodes",
        "## Windows per day",
        "## Duration",
        "## Recoveries",
        "## Idle-wake vs mid-use",
        "## Claude Code versions",
        "## Model throttles (429 `rate_limit_error`)",
        "## Episodes",
        "## Request ids",
    ] {
        assert!(
            md.lines().any(|l| l == heading),
            "missing {heading:?}:\n{md}"
        );
    }
    assert!(md.contains("Sources: 1 seen live by claude-watch"), "{md}");
    assert!(
        md.contains("5 rebuilt from Claude Code's session transcripts"),
        "{md}"
    );
    assert!(md.contains("| **total** | **6** |"), "{md}");
    assert!(md.contains("| idle-wake (idle > 1 h) | 1 |"), "{md}");
    assert!(md.contains("| mid-use (idle <= 1 h) | 5 |"), "{md}");
    assert!(md.contains("| recovered after a restart | 3 |"), "{md}");
    assert!(md.contains("| self-recovered, no restart | 2 |"), "{md}");
    assert!(
        md.contains("| never: the process exited latched | 1 |"),
        "{md}"
    );
    for v in ["2.1.331", "2.1.197", "2.1.332"] {
        assert!(md.contains(&format!("| {v} |")), "version {v}: {md}");
    }
    assert!(
        md.contains("| request id | time (CST) | instance |"),
        "{md}"
    );
    // Every request id, live and imported, with its local time (UTC-06:00).
    let table: Vec<&str> = md
        .lines()
        .skip_while(|l| *l != "## Request ids")
        .filter(|l| l.starts_with("| `req_"))
        .collect();
    let mut expected: Vec<String> = vec![
        "req_011CLiveAAAAAAAAAAAAAAAA".into(),
        "req_011CLiveBBBBBBBBBBBBBBBB".into(),
    ];
    expected.extend(request_ids_401("fleet-a").into_iter().take(5));
    for id in &expected {
        let row = table
            .iter()
            .find(|r| r.contains(id.as_str()))
            .unwrap_or_else(|| panic!("no row for {id}:\n{md}"));
        assert!(row.contains("-06:00"), "{row}");
    }
    // The live episode's first 401 (1796000000000 ms = 2026-11-30T00:53:20Z) in CST.
    assert!(
        table
            .iter()
            .any(|r| r.contains("req_011CLiveAAAAAAAAAAAAAAAA")
                && r.contains("2026-11-29 18:53:20-06:00")),
        "{table:#?}"
    );
    assert!(md.contains("| fleet-a |"), "{md}");

    // Redacted: the same report with instance-N names only.
    let red = String::from_utf8(
        episodes_cmd(
            &["--journal", j, "--format", "markdown", "--redact-instances"],
            "CST+6",
        )
        .stdout,
    )
    .unwrap();
    for name in ["fleet-a", "fleet-b", "fleet-c", "fleet-idle", "reviewer"] {
        assert!(!red.contains(name), "{name} left in:\n{red}");
    }
    assert!(red.contains("| instance-1 |"), "{red}");
    assert!(red.contains("| instance-5 |"), "{red}");
    assert!(!red.contains("instance-6"), "five instances: {red}");
    // Consistent: the live episode is the oldest, instance-1, in every table.
    let rows_1: Vec<&str> = red
        .lines()
        .filter(|l| l.contains("| instance-1 |"))
        .collect();
    assert!(
        rows_1
            .iter()
            .any(|r| r.contains("req_011CLiveAAAAAAAAAAAAAAAA")),
        "{rows_1:#?}"
    );
    assert!(rows_1.iter().any(|r| r.contains("2.1.332")), "{rows_1:#?}");
}

fn chromium() -> PathBuf {
    find_on_path("chromium")
        .expect("Debian's `chromium` is not installed (run `cargo xtask setup --tests`)")
}

fn svg_height(svg: &str) -> u32 {
    let start = svg.find("height=\"").unwrap() + 8;
    svg[start..]
        .split('"')
        .next()
        .unwrap()
        .parse()
        .expect("numeric height")
}

/// `claude-watch episodes --journal JOURNAL --svg SVG` in time zone `tz`; the picture's text.
#[track_caller]
fn draw(journal: &Path, svg: &Path, tz: &str) -> String {
    episodes_cmd(
        &[
            "--journal",
            journal.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
        ],
        tz,
    );
    std::fs::read_to_string(svg).unwrap()
}

/// A page drawn by headless Chromium into a PNG, as RGB pixels.
struct Screenshot {
    pixels: Vec<[u8; 3]>,
}

impl Screenshot {
    /// Draws `url` in a window of `size` (px, device scale 1) and reads the PNG back;
    /// `CLAUDE_WATCH_KEEP_PNG=DIR` keeps it there.
    fn take(dir: &Path, url: &str, size: (u32, u32)) -> Self {
        let png_path = dir.join(format!("shot-{}x{}.png", size.0, size.1));
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).unwrap();
        let out = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--force-color-profile=srgb",
                "--force-device-scale-factor=1",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--screenshot={}", png_path.display()))
            .arg(format!("--window-size={},{}", size.0, size.1))
            .arg(url)
            .output()
            .expect("run chromium");
        assert!(
            png_path.is_file(),
            "chromium wrote no screenshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(keep) = std::env::var_os("CLAUDE_WATCH_KEEP_PNG") {
            std::fs::create_dir_all(&keep).unwrap();
            std::fs::copy(
                &png_path,
                Path::new(&keep).join(png_path.file_name().unwrap()),
            )
            .unwrap();
        }
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&png_path).unwrap(),
        ));
        let mut reader = decoder.read_info().expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).expect("a frame");
        assert_eq!((info.width, info.height), size);
        let channels = info.color_type.samples();
        let pixels = buf[..info.buffer_size()]
            .chunks(channels)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        Self { pixels }
    }

    /// Pixels of colour `hex` (`#rrggbb`, within 4 per channel).
    fn count(&self, hex: &str) -> usize {
        let c = [
            u8::from_str_radix(&hex[1..3], 16).unwrap(),
            u8::from_str_radix(&hex[3..5], 16).unwrap(),
            u8::from_str_radix(&hex[5..7], 16).unwrap(),
        ];
        self.pixels
            .iter()
            .filter(|p| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 4))
            .count()
    }
}

#[test]
fn svg_picture_is_drawn_by_a_real_browser() {
    let dir = ScratchDir::new("cw-history-svg");
    let journal = live_and_imported(dir.path());
    let svg_path = dir.path().join("episodes.svg");
    // UTC-06:00: the live episode falls on the day before the imported ones.
    let svg = draw(&journal, &svg_path, "CST+6");

    // Structure: one bar per episode, coloured by how it ended; the throttle; restart ticks;
    // a bar per day; a title on the picture and on every mark.
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.contains("<title id=\"cw-title\">Claude Code 401 latch episodes: 6 windows on 5 instances</title>"), "{svg}");
    assert_eq!(svg.matches("class=\"episode\"").count(), 6);
    assert_eq!(svg.matches("data-end=\"self_recovered\" ").count(), 2);
    assert_eq!(
        svg.matches("data-end=\"recovered_after_restart\" ").count(),
        3
    );
    assert_eq!(svg.matches("data-end=\"process_exited\" ").count(), 1);
    assert_eq!(svg.matches("class=\"throttle\"").count(), 1);
    assert_eq!(svg.matches("class=\"restart\"").count(), 3);
    assert_eq!(svg.matches("class=\"day\"").count(), 2, "two days");
    for line in svg
        .lines()
        .filter(|l| l.contains("<rect class=") || l.contains("<line class="))
    {
        assert!(line.contains("<title>"), "mark without a title: {line}");
    }
    assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());

    // Drawn by Chromium, headless, into a PNG.
    let height = svg_height(&svg);
    let shot = Screenshot::take(
        dir.path(),
        &format!("file://{}", svg_path.display()),
        (960, height),
    );
    let count = |hex: &str| shot.count(hex);
    let pixels = &shot.pixels;
    let white = count("#ffffff");
    assert!(
        white > pixels.len() / 3,
        "mostly a white page: {white} of {}",
        pixels.len()
    );
    // Each bar colour is drawn, beyond the legend's 14 × 14 swatch.
    for (what, colour) in [
        ("self-recovered", "#2e7d32"),
        ("recovered after restart", "#1565c0"),
        ("never recovered", "#c62828"),
        ("throttle", "#8e24aa"),
        ("histogram", "#546e7a"),
    ] {
        let n = count(colour);
        assert!(n > 14 * 14 + 20, "{what} ({colour}): {n} pixels");
    }
}

/// The write-up's scale: two weeks of its windows over 30 agents, in the journal the recovery
/// core writes for them (`claude-watch replay --journal`), drawn folded by day (a row per day,
/// a lane per agent) and looked at by a real browser at full size and at half size.
#[test]
fn a_fleets_two_weeks_are_drawn_and_read_at_two_sizes() {
    let dir = ScratchDir::new("cw-history-fleet-svg");
    let journal = dir.path().join("replay.jsonl");
    let out = Command::new(bin())
        .args(["replay", "--instances", "30", "--days", "14", "--journal"])
        .arg(&journal)
        .output()
        .expect("run claude-watch replay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay failed: {stderr}");
    assert!(stderr.contains("episodes of 30 agents"), "{stderr}");

    // The history at the write-up's scale: hundreds of windows on 30 instances, seconds to
    // hours long, every one recovered.
    let mut latest: std::collections::BTreeMap<String, Episode> = Default::default();
    for e in journal_episodes(&journal) {
        latest.insert(e.id.clone(), e);
    }
    let eps: Vec<&Episode> = latest.values().collect();
    let names: BTreeSet<&str> = eps.iter().map(|e| e.instance.as_str()).collect();
    assert_eq!(names.len(), 30);
    assert!(eps.len() >= 300, "{} episodes", eps.len());
    let shortest = eps.iter().map(|e| e.duration_ms()).min().unwrap();
    let longest = eps.iter().map(|e| e.duration_ms()).max().unwrap();
    assert!(
        shortest < 60_000 && longest > 2 * 3_600_000,
        "{shortest} .. {longest} ms"
    );
    assert!(
        eps.iter()
            .all(|e| e.end == EpisodeEnd::RecoveredAfterRestart)
    );
    let restarts = journal_records(&journal)
        .iter()
        .filter(|r| matches!(r, Record::Action(a) if a.kind == ActionKind::Restart))
        .count();
    assert!(restarts > eps.len(), "{restarts} restarts");

    let svg_path = dir.path().join("fleet.svg");
    let svg = draw(&journal, &svg_path, "UTC");
    assert!(
        svg.contains(&format!("{} windows on 30 instances</title>", eps.len())),
        "{}",
        &svg[..400]
    );
    assert!(svg.contains("401 latch episodes by day (a lane per instance)"));
    // Every episode and every restart a mark of its own; a row per day.
    assert_eq!(svg.matches("class=\"episode\"").count(), eps.len());
    assert_eq!(svg.matches("class=\"restart\"").count(), restarts);
    let days = svg.matches("class=\"day-row\"").count();
    assert!((14..=16).contains(&days), "{days} day rows");
    for line in svg
        .lines()
        .filter(|l| l.contains("<rect class=\"episode") || l.contains("<line class="))
    {
        assert!(line.contains("<title>"), "mark without a title: {line}");
    }

    // Full size, as the file opens; then half size, scaled into a page (a laptop's side
    // panel, a chat preview). Both read: the bars, the restart ticks and the histograms are
    // drawn, and the half-size picture is the whole picture scaled, not a crop of it.
    let height = svg_height(&svg);
    let full = Screenshot::take(
        dir.path(),
        &format!("file://{}", svg_path.display()),
        (960, height),
    );
    let page = dir.path().join("fleet.html");
    std::fs::write(
        &page,
        "<!doctype html><html><body style=\"margin:0\"><img src=\"fleet.svg\" style=\"width:100%;display:block\" alt=\"\"></body></html>",
    )
    .unwrap();
    let half = Screenshot::take(
        dir.path(),
        &format!("file://{}", page.display()),
        (480, height / 2 + 1),
    );
    for (size, shot) in [("full", &full), ("half", &half)] {
        let white = shot.count("#ffffff") + shot.count("#f5f5f5");
        assert!(
            white > shot.pixels.len() / 2,
            "{size}: mostly background: {white}"
        );
        for (what, colour, at_least) in [
            ("recovered after restart", "#1565c0", 20_000),
            ("restart ticks", "#212121", 200),
            ("histograms", "#546e7a", 5_000),
        ] {
            let n = shot.count(colour);
            let want = if size == "full" {
                at_least
            } else {
                at_least / 5
            };
            assert!(n > want, "{size}: {what} ({colour}): {n} pixels");
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "pixel counts")]
    let ratio = half.count("#546e7a") as f64 / full.count("#546e7a") as f64;
    assert!(
        (0.15..0.4).contains(&ratio),
        "half size is a quarter of the area: {ratio}"
    );
}

/// The real Claude Code's transcript as it writes it (nothing left out), imported: the episode
/// carries exactly the request ids the stand-in answered 401 with.
#[test]
fn imports_a_transcript_as_claude_code_writes_it() {
    use claude_watch_tests::agents::{ClaudeAgent, FAKE_API_KEY};
    use claude_watch_tests::deps::ClaudeCode;
    use claude_watch_tests::standin::StandIn;
    use std::time::Duration;

    let standin = StandIn::start();
    let mut claude = ClaudeAgent::start_with_env(
        &standin,
        ClaudeCode::Native2_1_331,
        FAKE_API_KEY,
        &[("CLAUDE_CODE_MAX_RETRIES", "5")],
    );
    let turn = Duration::from_secs(90);
    let from = claude.send_turn("first");
    let first = claude.wait_for_result(from, turn);
    assert!(!first.is_error, "{first:?}");
    standin.latch_session(&first.session_id);
    let from = claude.send_turn("second, latched");
    assert!(claude.wait_for_result(from, turn).is_error);
    standin.unlatch_session(&first.session_id);
    let from = claude.send_turn("third");
    assert!(!claude.wait_for_result(from, turn).is_error);
    let answered_401: Vec<String> = standin
        .log()
        .into_iter()
        .filter(|e| e.status == 401)
        .map(|e| e.request_id)
        .collect();
    assert_eq!(
        answered_401.len(),
        6,
        "1 + CLAUDE_CODE_MAX_RETRIES requests"
    );

    let dir = ScratchDir::new("cw-history-live-transcript");
    let journal = dir.path().join("journal.jsonl");
    let out = episodes_cmd(
        &[
            "--journal",
            journal.to_str().unwrap(),
            "--import",
            claude.home().join(".claude").to_str().unwrap(),
            "--json",
        ],
        "UTC",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 episodes added"), "{stderr}");
    assert!(stderr.contains("0 malformed, 0 truncated"), "{stderr}");
    let eps = journal_episodes(&journal);
    assert_eq!(eps.len(), 1, "{eps:#?}");
    let e = &eps[0];
    assert_eq!(e.end, EpisodeEnd::SelfRecovered);
    assert_eq!(e.count_401, 6);
    assert_eq!(e.session_ids, [first.session_id]);
    assert_eq!(e.first_request_ids, answered_401[..5]);
    assert_eq!(e.last_request_ids, answered_401[1..]);
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(!text.contains("latched") && !text.contains(FAKE_API_KEY));
}
