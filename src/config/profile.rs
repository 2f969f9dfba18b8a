//! Framed protocol profiles named by `protocol = "framed:<name>"`: a user
//! file in `[profiles] dir`, or a built-in profile (docs/framed.md). This is
//! the configuration's file-system side, kept apart from parsing: the
//! configuration names a profile, [`find_profile`] reads it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use otabridge_codecs::framed::profile::{self, Profile};

/// The profile of a `protocol = "framed:<name>"` child, loaded and validated
/// when the configuration is, so a broken profile stops `otabridge run` at
/// start instead of failing the first upgrade.
#[derive(Clone, PartialEq, Eq)]
pub struct FramedProfile {
    /// The name after `framed:`.
    pub name: String,
    /// The user profile file it came from; `None` for a built-in profile.
    pub file: Option<PathBuf>,
    /// The validated profile.
    pub profile: Arc<Profile>,
}

/// Name and origin only: the whole profile would bury a logged config.
impl fmt::Debug for FramedProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FramedProfile")
            .field("name", &self.name)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Why `framed:<name>` names no usable profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileLookupError {
    /// Not a profile name at all (so it cannot be a file name either).
    #[error("'{0}' is not a profile name (1 to 64 of a-z, 0-9 and '-')")]
    BadName(String),
    /// Neither a user file nor a built-in profile has this name.
    #[error("no profile '{name}': built-in profiles are {builtin}; {where_}")]
    Unknown {
        /// The name.
        name: String,
        /// The built-in names, comma separated.
        builtin: String,
        /// Where user profiles were looked for.
        where_: String,
    },
    /// The user profile file could not be read.
    #[error("cannot read profile {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The profile is invalid; the message is `file:line: what is wrong`.
    #[error("invalid profile {0}")]
    Invalid(#[from] profile::ProfileError),
    /// The file's `[protocol] name` is not its file name, so logs and
    /// `otabridge status` would name another protocol than the config.
    #[error("{file}:{line}: [protocol] name is '{found}', but the file is named for '{name}'")]
    NameMismatch {
        /// The file.
        file: String,
        /// The line of `name =` (1 if not found).
        line: usize,
        /// The name in the file.
        found: String,
        /// The name the child asked for.
        name: String,
    },
}

/// The profile a command line's `--profile` names (`otabridge sim
/// framed-child`, `otabridge image inspect`): a file when it has a `/` or
/// ends in `.toml`, else a built-in profile.
pub fn load_profile(spec: &str) -> Result<Arc<Profile>, ProfileLookupError> {
    if spec.contains('/') || spec.ends_with(".toml") {
        let text = std::fs::read_to_string(spec).map_err(|source| ProfileLookupError::Read {
            file: spec.into(),
            source,
        })?;
        return Ok(Arc::new(Profile::parse(&text, spec)?));
    }
    Ok(find_profile(spec, None)?.profile)
}

/// Finds the profile `name`: `<dir>/<name>.toml` if `dir` is given and has
/// that file, else the built-in profile of that name. Used by the
/// configuration and by `otabridge sim framed-child`.
pub fn find_profile(name: &str, dir: Option<&Path>) -> Result<FramedProfile, ProfileLookupError> {
    if !otabridge_codecs::framed::profile::is_valid_name(name) {
        return Err(ProfileLookupError::BadName(name.to_owned()));
    }
    if let Some(dir) = dir {
        let file = dir.join(format!("{name}.toml"));
        if file.exists() {
            let text =
                std::fs::read_to_string(&file).map_err(|source| ProfileLookupError::Read {
                    file: file.clone(),
                    source,
                })?;
            let shown = file.display().to_string();
            let p = Profile::parse(&text, &shown)?;
            if p.name != name {
                let line = text
                    .lines()
                    .position(|l| l.trim_start().starts_with("name") && l.contains(&p.name))
                    .map_or(1, |i| i + 1);
                return Err(ProfileLookupError::NameMismatch {
                    file: shown,
                    line,
                    found: p.name,
                    name: name.to_owned(),
                });
            }
            return Ok(FramedProfile {
                name: name.to_owned(),
                file: Some(file),
                profile: Arc::new(p),
            });
        }
    }
    match profile::builtin(name) {
        Some(p) => Ok(FramedProfile {
            name: name.to_owned(),
            file: None,
            profile: Arc::new(p?),
        }),
        None => Err(ProfileLookupError::Unknown {
            name: name.to_owned(),
            builtin: profile::BUILTIN
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
            where_: match dir {
                Some(d) => format!("{} has no {name}.toml", d.display()),
                None => "no [profiles] dir is configured for user profiles".to_owned(),
            },
        }),
    }
}
