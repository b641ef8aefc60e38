//! A supervisor command: an argv template with `{unit}`, `{pid}` and `{instance}` substituted
//! per argument and run without a shell, under a timeout (e.g. `supervisorctl restart
//! {instance}`, `s6-svc -r /run/service/{unit}`, `sv restart {unit}`, `docker restart {unit}`).

use std::process::Stdio;

use tokio::process::Command;

use super::{RestartOutcome, Restarter, SuperviseError, Target};
pub use claude_watch_core::supervise::CommandRestarter;

impl Restarter for CommandRestarter {
    #[tracing::instrument(skip_all, fields(instance = %target.instance, pid = target.pid))]
    async fn restart(&self, target: &Target) -> Result<RestartOutcome, SuperviseError> {
        let argv = self.render(target)?;
        self.run(argv, target).await
    }
}

/// Rendering the command and running it (the restarter's values are the core's).
#[allow(
    async_fn_in_trait,
    reason = "used on the concrete type only, whose futures are Send"
)]
pub trait CommandIo {
    /// The argv for `target`: each placeholder replaced inside each argument, nothing split or
    /// interpreted, so observed data can never become shell syntax or extra arguments.
    ///
    /// # Errors
    /// [`SuperviseError::MissingPlaceholder`] when `{unit}` is used and the target has no unit.
    fn render(&self, target: &Target) -> Result<Vec<String>, SuperviseError>;

    /// [`CommandRestarter::render`] with `extra` placeholders and their values (the hook's
    /// `{reason}` and `{instances}`). Every argument is rendered in one pass, so a value that
    /// happens to contain a placeholder's text is never substituted again.
    ///
    /// # Errors
    /// [`SuperviseError::MissingPlaceholder`] when `{unit}` is used and the target has no unit.
    fn render_with(
        &self,
        target: &Target,
        extra: &[(&'static str, &str)],
    ) -> Result<Vec<String>, SuperviseError>;

    /// Runs the rendered `argv` for `target`: no shell, its own process group, killed with
    /// its children when it outlives the timeout.
    ///
    /// # Errors
    /// [`SuperviseError::Spawn`], [`SuperviseError::CommandFailed`] (a non-zero exit) or
    /// [`SuperviseError::Timeout`].
    async fn run(
        &self,
        argv: Vec<String>,
        target: &Target,
    ) -> Result<RestartOutcome, SuperviseError>;
}

impl CommandIo for CommandRestarter {
    fn render(&self, target: &Target) -> Result<Vec<String>, SuperviseError> {
        self.render_with(target, &[])
    }

    fn render_with(
        &self,
        target: &Target,
        extra: &[(&'static str, &str)],
    ) -> Result<Vec<String>, SuperviseError> {
        let pid = target.pid.to_string();
        self.argv
            .iter()
            .map(|arg| {
                let mut out = String::with_capacity(arg.len());
                let mut rest = arg.as_str();
                while let Some(open) = rest.find('{') {
                    out.push_str(&rest[..open]);
                    let tail = &rest[open..];
                    let Some(close) = tail.find('}') else { break };
                    let placeholder = &tail[..=close];
                    let value = match placeholder {
                        "{instance}" => Some(target.instance.as_str()),
                        "{pid}" => Some(pid.as_str()),
                        "{unit}" => Some(target.unit.as_deref().ok_or_else(|| {
                            SuperviseError::MissingPlaceholder {
                                placeholder: "{unit}",
                                instance: target.instance.clone(),
                            }
                        })?),
                        other => extra.iter().find(|(p, _)| *p == other).map(|(_, v)| *v),
                    };
                    out.push_str(value.unwrap_or(placeholder));
                    rest = &tail[close + 1..];
                }
                out.push_str(rest);
                Ok(out)
            })
            .collect()
    }

    async fn run(
        &self,
        argv: Vec<String>,
        target: &Target,
    ) -> Result<RestartOutcome, SuperviseError> {
        let program = argv.first().cloned().unwrap_or_default();
        let mut command = Command::new(&program);
        command.args(&argv[1..]).stdout(Stdio::null());
        let what = format!("command {program}");
        match super::run_bounded(&mut command, &program, what, self.timeout, 0).await {
            Ok((status, _, _)) if status.success() => {
                tracing::info!(program = %program, "supervisor command succeeded");
                Ok(RestartOutcome::acted(
                    target.unit.clone(),
                    None,
                    format!("ran {program} for instance {}", target.instance),
                ))
            }
            Ok((status, _, said)) => {
                tracing::warn!(program = %program, %status, said, "supervisor command failed");
                Err(SuperviseError::CommandFailed {
                    program,
                    status,
                    said,
                })
            }
            Err(timeout @ SuperviseError::Timeout { .. }) => {
                tracing::warn!(program = %program, timeout = ?self.timeout, "supervisor command timed out, killed");
                Err(timeout)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn target(unit: Option<&str>) -> Target {
        Target {
            instance: "agent; rm -rf /".into(),
            unit: unit.map(Into::into),
            pid: 4242,
            start_time: None,
            uid: None,
            placement: crate::instance::Placement::Unsupervised,
        }
    }

    #[test]
    fn placeholders_are_substituted_per_argument_without_splitting() {
        let r = CommandRestarter::new(
            vec![
                "ctl".into(),
                "restart".into(),
                "{instance}".into(),
                "--pid={pid}".into(),
                "{unit}".into(),
            ],
            Duration::from_secs(1),
        );
        let argv = r.render(&target(Some("a b.service"))).unwrap();
        assert_eq!(
            argv,
            [
                "ctl",
                "restart",
                "agent; rm -rf /",
                "--pid=4242",
                "a b.service"
            ]
        );
    }

    #[test]
    fn the_hooks_placeholders_are_rendered_in_one_pass() {
        let r = CommandRestarter::new(
            vec![
                "page".into(),
                "{instance}".into(),
                "why={reason}".into(),
                "{instances}".into(),
                "{other}".into(),
            ],
            Duration::from_secs(1),
        );
        let mut t = target(None);
        t.instance = "a{pid}".into();
        let argv = r
            .render_with(
                &t,
                &[
                    ("{reason}", "3 restarts {instances}"),
                    ("{instances}", "a,b"),
                ],
            )
            .unwrap();
        assert_eq!(
            argv,
            [
                "page",
                "a{pid}",
                "why=3 restarts {instances}",
                "a,b",
                "{other}"
            ]
        );
    }

    #[test]
    fn missing_unit_is_an_error() {
        let r = CommandRestarter::new(
            vec!["sv".into(), "restart".into(), "{unit}".into()],
            Duration::from_secs(1),
        );
        assert!(matches!(
            r.render(&target(None)),
            Err(SuperviseError::MissingPlaceholder {
                placeholder: "{unit}",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn exit_status_is_checked() {
        let ok = CommandRestarter::new(vec!["true".into()], Duration::from_secs(5));
        assert!(ok.restart(&target(None)).await.unwrap().acted);
        let bad = CommandRestarter::new(vec!["false".into()], Duration::from_secs(5));
        assert!(matches!(
            bad.restart(&target(None)).await,
            Err(SuperviseError::CommandFailed { .. })
        ));
        // Its own reason is kept: the last lines of its stderr, bounded and escaped.
        let said = CommandRestarter::new(
            vec![
                "sh".into(),
                "-c".into(),
                "seq 1 5000 >&2; printf 'error: ANTHROPIC_BASE_URL is set only in the environment\\033[2J\\n\\n' >&2; exit 3".into(),
            ],
            Duration::from_secs(5),
        );
        let e = said
            .restart(&target(None))
            .await
            .expect_err("exit 3")
            .to_string();
        assert!(
            e.starts_with("supervisor command sh failed with exit status: 3: ")
                && e.ends_with(
                    "5000 / error: ANTHROPIC_BASE_URL is set only in the environment\\u{1b}[2J"
                ),
            "{e}"
        );
        assert!(e.len() < 500, "bounded: {e}");
        let missing =
            CommandRestarter::new(vec!["/nonexistent/ctl".into()], Duration::from_secs(5));
        assert!(matches!(
            missing.restart(&target(None)).await,
            Err(SuperviseError::Spawn { .. })
        ));
    }
}
