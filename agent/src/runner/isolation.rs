//! Who a job runs as, and the private directory it runs in.
//!
//! An agent started as root runs jobs as the unprivileged `run_as` user
//! (never as root unless `allow_root` says so); an agent that is not root
//! cannot switch users and runs jobs as itself. Either way each job gets its
//! own directory, mode 0700 and owned by the job's user, so jobs of other
//! tenants on the node cannot read it.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::{chown, Gid, Uid, User};

/// The user jobs run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobUser {
    /// The agent's own user: no switch (an agent that is not root, or one
    /// allowed to run jobs as root).
    Agent,
    /// Another user, switched to before the job's command runs.
    User {
        name: String,
        uid: u32,
        gid: u32,
        /// The user's home directory, given to the job as `HOME`.
        home: PathBuf,
    },
}

/// Why no job user could be settled on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobUserError {
    #[error("the agent runs as root, so jobs would too: set --run-as USER (an unprivileged user for jobs), or --allow-root to run them as root on purpose")]
    NoRunAs,
    #[error("--run-as {0} is root (uid 0): jobs run as root only with --allow-root")]
    RootNotAllowed(String),
    #[error("--run-as {0}: no such user")]
    UnknownUser(String),
    #[error("--run-as {name}: cannot look the user up: {reason}")]
    Lookup { name: String, reason: String },
}

/// Settles who jobs run as, and what to tell the operator once (`None`:
/// nothing worth saying).
pub fn resolve_job_user(
    run_as: Option<&str>,
    allow_root: bool,
) -> Result<(JobUser, Option<String>), JobUserError> {
    let me = Uid::effective();
    if !me.is_root() {
        let notice = match run_as {
            Some(name) => format!(
                "the agent is not root (uid {me}), so it cannot switch to --run-as {name}: jobs run as the agent's own user"
            ),
            None => format!("the agent is not root: jobs run as the agent's own user (uid {me})"),
        };
        return Ok((JobUser::Agent, Some(notice)));
    }
    let Some(name) = run_as else {
        if allow_root {
            return Ok((
                JobUser::Agent,
                Some("jobs run as root (--allow-root)".to_string()),
            ));
        }
        return Err(JobUserError::NoRunAs);
    };
    let user = User::from_name(name)
        .map_err(|e| JobUserError::Lookup {
            name: name.to_string(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| JobUserError::UnknownUser(name.to_string()))?;
    if user.uid.is_root() {
        if !allow_root {
            return Err(JobUserError::RootNotAllowed(name.to_string()));
        }
        return Ok((
            JobUser::Agent,
            Some("jobs run as root (--allow-root)".to_string()),
        ));
    }
    Ok((
        JobUser::User {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        },
        None,
    ))
}

/// Creates `<jobs_dir>/<job>` (mode 0700, owned by the job's user) and
/// makes `jobs_dir` passable (0711) but not listable by job users.
pub(super) fn create_job_dir(jobs_dir: &Path, dir: &Path, user: &JobUser) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    if let JobUser::User { .. } = user {
        fs::set_permissions(jobs_dir, fs::Permissions::from_mode(0o711))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    if let JobUser::User { uid, gid, .. } = user {
        chown(dir, Some(Uid::from_raw(*uid)), Some(Gid::from_raw(*gid)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_that_is_not_root_runs_jobs_as_itself_and_says_so() {
        if Uid::effective().is_root() {
            println!("SKIPPED: the test process is root");
            return;
        }
        let (user, notice) = resolve_job_user(Some("nobody"), false).unwrap();
        assert_eq!(user, JobUser::Agent);
        assert!(notice.unwrap().contains("cannot switch"));
    }

    #[test]
    fn root_needs_a_run_as_user_or_an_explicit_allow_root() {
        if !Uid::effective().is_root() {
            println!("SKIPPED: the test process is not root");
            return;
        }
        assert_eq!(resolve_job_user(None, false), Err(JobUserError::NoRunAs));
        assert_eq!(
            resolve_job_user(Some("root"), false),
            Err(JobUserError::RootNotAllowed("root".into()))
        );
        assert_eq!(resolve_job_user(None, true).unwrap().0, JobUser::Agent);
        assert!(matches!(
            resolve_job_user(Some("no-such-user-edupool"), false),
            Err(JobUserError::UnknownUser(_))
        ));
        let (nobody, _) = resolve_job_user(Some("nobody"), false).unwrap();
        assert!(matches!(nobody, JobUser::User { uid, .. } if uid != 0));
    }
}
