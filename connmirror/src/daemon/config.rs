//! Configuration files: TOML tables whose keys are the command line's long flags.
//!
//! A file holds one table per subcommand (`[mirror]`, `[standby]`, `[agent]`,
//! ...), so that one file can configure a host. Inside a table a key is a long
//! flag of that subcommand with `_` for `-` (`ring_size` is `--ring-size`):
//! a string or an integer for a flag that takes a value, an array of them for
//! a flag that can be repeated, a boolean for a switch. Nothing here names a
//! flag: the keys come from walking the clap [`Command`], so every flag is
//! configurable as soon as it exists, and every value goes through the same
//! clap value parser as on the command line (one set of validation rules).
//!
//! The file is read and checked whole before anything starts; errors name the
//! file, the line and the key:
//!
//! ```text
//! /etc/connmirror/connmirror.toml:7: key "standby.ring_size": invalid value "12K": ...
//! ```
//!
//! A flag given on the command line replaces the file's value for that key
//! (for a repeatable flag the command line's list replaces the file's list).
//! [`apply`] does that by appending the file's settings, as `--flag=value`
//! arguments, for the keys the command line left out; clap then parses the
//! result as usual, so a required flag may come from the file alone.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The id and long name of the flag that names the file.
pub const CONFIG_FLAG: &str = "config";

/// Which subcommands a file configures.
#[derive(Clone, Copy, Debug)]
pub struct Layout<'a> {
    /// Subcommands that take `--config FILE`; each reads the table of its name.
    pub tables: &'a [&'a str],
    /// `(key, sources, tables)`: each of `tables` that does not set `key`
    /// takes it from the first of `sources` that does (the client commands
    /// take the node's `control` socket, the standby's or the agent's, so it
    /// is written once).
    pub inherit: &'a [Inherit<'a>],
}

/// One `(key, sources, tables)` of [`Layout::inherit`].
pub type Inherit<'a> = (&'a str, &'a [&'a str], &'a [&'a str]);

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// The TOML parser's message.
        message: String,
    },
    /// A key is unknown or its value is wrong.
    #[error("{}:{line}: key \"{key}\": {problem}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key or the offending value.
        line: usize,
        /// The key, dotted with its table (`standby.ring_size`).
        key: String,
        /// What is wrong with it.
        problem: KeyProblem,
    },
    /// A table, together with the defaults, does not make a valid command
    /// (a required key is missing, a key needs another).
    #[error("{}:{line}: [{table}]: {message}", path.display())]
    Table {
        /// The file.
        path: PathBuf,
        /// 1-based line of the table's header.
        line: usize,
        /// The table.
        table: String,
        /// What is missing or conflicting.
        message: String,
    },
}

/// What is wrong with one key.
#[derive(Debug, thiserror::Error)]
pub enum KeyProblem {
    /// The subcommand has no such flag.
    #[error("unknown key: `connmirror {table}` has no flag --{flag}")]
    UnknownKey {
        /// The table (subcommand).
        table: String,
        /// The flag the key would be.
        flag: String,
    },
    /// A top-level key that names no subcommand.
    #[error("unknown table: expected one of {expected}")]
    UnknownTable {
        /// The tables a file may hold, as `[mirror], [standby], ...`.
        expected: String,
    },
    /// The value has the wrong TOML type.
    #[error("expected {expected}, found {}", article(found))]
    Type {
        /// What the flag takes.
        expected: &'static str,
        /// The TOML type found.
        found: &'static str,
    },
    /// The flag's value parser rejected the value.
    #[error("invalid value \"{value}\": {reason}")]
    Invalid {
        /// The value as the flag would get it.
        value: String,
        /// The parser's reason.
        reason: String,
    },
}

/// Adds `--config FILE` to each subcommand of `layout`.
pub fn with_config_flag(cmd: Command, layout: &Layout<'_>) -> Command {
    layout.tables.iter().fold(cmd, |cmd, &table| {
        cmd.mut_subcommand(table, |sub| sub.arg(config_arg(table)))
    })
}

fn config_arg(table: &str) -> Arg {
    Arg::new(CONFIG_FLAG)
        .long(CONFIG_FLAG)
        .value_name("FILE")
        .value_parser(clap::value_parser!(PathBuf))
        .help(format!(
            "Read settings from the [{table}] table of this TOML file: each key is a \
             long flag with _ for - (ring_size = \"16M\"), arrays for repeatable flags, \
             booleans for switches. Flags given here override the file's value; \
             `connmirror config check FILE` validates a file and prints the effective \
             settings"
        ))
}

/// `argv` with the settings of the file that its `--config` names, for the
/// keys the command line leaves out. `cmd` must already have the
/// `--config` flags ([`with_config_flag`]). Command lines without `--config`,
/// and those clap cannot parse even partially (`--help`), come back unchanged.
pub fn apply(
    cmd: &Command,
    layout: &Layout<'_>,
    argv: Vec<OsString>,
) -> Result<Vec<OsString>, ConfigError> {
    let Ok(matches) = cmd.clone().ignore_errors(true).try_get_matches_from(&argv) else {
        return Ok(argv);
    };
    let Some((name, sub)) = matches.subcommand() else {
        return Ok(argv);
    };
    let Some(path) = sub.try_get_one::<PathBuf>(CONFIG_FLAG).ok().flatten() else {
        return Ok(argv);
    };
    let config = Config::read(path, cmd, layout)?;
    let extra = config.args_for(name, |id| {
        sub.value_source(id) == Some(ValueSource::CommandLine)
    });
    Ok(splice(argv, name, extra))
}

/// Inserts `extra` after the last argument of subcommand `name`: before a
/// `--` that follows it, else at the end (the user's own arguments come
/// first, so clap reports their errors first).
fn splice(mut argv: Vec<OsString>, name: &str, extra: Vec<OsString>) -> Vec<OsString> {
    let sub = argv.iter().position(|a| a == name).unwrap_or(0);
    let at = argv[sub..]
        .iter()
        .position(|a| a == "--")
        .map_or(argv.len(), |i| sub + i);
    argv.splice(at..at, extra);
    argv
}

/// A configuration file, read and checked whole.
#[derive(Debug)]
pub struct Config {
    path: PathBuf,
    tables: BTreeMap<String, Table>,
}

/// One subcommand's settings.
#[derive(Debug, Default)]
struct Table {
    /// Line of its header; `None` for a table only inherited into.
    line: Option<usize>,
    entries: Vec<Entry>,
}

/// One key, validated: what it adds to the command line.
#[derive(Clone, Debug)]
struct Entry {
    /// The clap argument id.
    id: String,
    /// The long flag.
    long: String,
    /// The arguments it stands for (`--long=value`, or the bare switch).
    args: Vec<String>,
}

impl Config {
    /// Reads and checks `path` against `cmd`'s subcommands named in `layout`.
    pub fn read(path: &Path, cmd: &Command, layout: &Layout<'_>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text, cmd, layout)
    }

    /// Checks `text` (the contents of `path`) against `cmd`.
    pub fn parse(
        path: &Path,
        text: &str,
        cmd: &Command,
        layout: &Layout<'_>,
    ) -> Result<Config, ConfigError> {
        let mut cmd = cmd.clone();
        cmd.build();
        let parser = Parser { path, text };
        let root = DeTable::parse(text).map_err(|e| parser.syntax(&e))?;
        let mut tables = BTreeMap::new();
        for (key, value) in root.get_ref() {
            let name = key.get_ref().as_ref();
            let sub = layout
                .tables
                .contains(&name)
                .then(|| cmd.find_subcommand(name))
                .flatten()
                .ok_or_else(|| parser.key_error(name, key.span(), unknown_table(layout)))?;
            let DeValue::Table(table) = value.get_ref() else {
                let found = value.get_ref().type_str();
                let problem = KeyProblem::Type {
                    expected: "a table",
                    found,
                };
                return Err(parser.key_error(name, value.span(), problem));
            };
            let entries = parser.table(name, sub, table)?;
            let line = Some(parser.line(key.span()));
            tables.insert(name.to_owned(), Table { line, entries });
        }
        inherit(&mut tables, &cmd, layout);
        Ok(Config {
            path: path.to_owned(),
            tables,
        })
    }

    /// The arguments the file adds to subcommand `table`, leaving out the
    /// keys whose argument id `given` says the command line has.
    pub fn args_for(&self, table: &str, given: impl Fn(&str) -> bool) -> Vec<OsString> {
        let Some(table) = self.tables.get(table) else {
            return Vec::new();
        };
        table
            .entries
            .iter()
            .filter(|entry| !given(&entry.id))
            .flat_map(|entry| entry.args.iter().map(OsString::from))
            .collect()
    }

    /// Each table the file holds as the full setting clap derives from it
    /// (file values, then defaults), as TOML; fails with the table that lacks
    /// a required key or breaks a rule between flags.
    pub fn effective(&self, cmd: &Command) -> Result<String, ConfigError> {
        let mut out = String::new();
        for (name, table) in &self.tables {
            let Some(line) = table.line else { continue };
            let mut argv = vec![OsString::from(cmd.get_name()), OsString::from(name)];
            argv.extend(self.args_for(name, |_| false));
            let matches =
                cmd.clone()
                    .try_get_matches_from(argv)
                    .map_err(|e| ConfigError::Table {
                        path: self.path.clone(),
                        line,
                        table: name.clone(),
                        message: table_problem(&e),
                    })?;
            let sub = matches
                .subcommand_matches(name)
                .expect("parsed this subcommand");
            let mut built = cmd.clone();
            built.build();
            let sub_cmd = built.find_subcommand(name).expect("a subcommand of cmd");
            write_table(&mut out, name, sub_cmd, sub);
        }
        Ok(out)
    }
}

/// Adds each `layout.inherit` key to the tables that lack it.
fn inherit(tables: &mut BTreeMap<String, Table>, cmd: &Command, layout: &Layout<'_>) {
    for &(long, sources, into) in layout.inherit {
        let Some(entry) = (sources.iter())
            .find_map(|from| tables.get(*from)?.entries.iter().find(|e| e.long == long))
            .cloned()
        else {
            continue;
        };
        for &name in into {
            let Some(arg) = cmd
                .find_subcommand(name)
                .and_then(|sub| sub.get_arguments().find(|a| a.get_long() == Some(long)))
            else {
                continue;
            };
            let table = tables.entry(name.to_owned()).or_default();
            if !table.entries.iter().any(|e| e.long == long) {
                let id = arg.get_id().as_str().to_owned();
                table.entries.push(Entry {
                    id,
                    ..entry.clone()
                });
            }
        }
    }
}

fn unknown_table(layout: &Layout<'_>) -> KeyProblem {
    let expected = layout
        .tables
        .iter()
        .map(|t| format!("[{t}]"))
        .collect::<Vec<_>>()
        .join(", ");
    KeyProblem::UnknownTable { expected }
}

/// A clap error about a whole table, in key terms.
fn table_problem(err: &clap::Error) -> String {
    if err.kind() == ErrorKind::MissingRequiredArgument
        && let Some(ContextValue::Strings(flags)) = err.get(ContextKind::InvalidArg)
    {
        let keys: Vec<String> = flags
            .iter()
            .map(|f| format!("\"{}\"", flag_key(f)))
            .collect();
        let s = if keys.len() == 1 { "" } else { "s" };
        return format!("missing required key{s} {}", keys.join(", "));
    }
    first_line(err)
}

/// `--ring-size <BYTES>` → `ring_size`.
fn flag_key(flag: &str) -> String {
    let long = flag.trim_start_matches('-');
    let long = long.split_whitespace().next().unwrap_or(long);
    long.replace('-', "_")
}

/// The first line of clap's message, without its `error: `.
fn first_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let line = rendered.lines().next().unwrap_or_default();
    line.trim_start_matches("error: ").to_owned()
}

/// Writes `[name]` and one line per flag of `sub`: its value, noting defaults.
fn write_table(out: &mut String, name: &str, sub: &Command, matches: &ArgMatches) {
    let _ = writeln!(out, "[{name}]");
    for arg in sub.get_arguments().filter(|a| configurable(a)) {
        let Some(long) = arg.get_long() else { continue };
        let key = long.replace('-', "_");
        let id = arg.get_id().as_str();
        let values: Vec<String> = matches
            .get_raw(id)
            .into_iter()
            .flatten()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let note = match matches.value_source(id) {
            Some(ValueSource::DefaultValue) => "  # default",
            _ => "",
        };
        match value_kind(arg) {
            Kind::Many => {
                let list: Vec<String> = values.iter().map(|v| quote(v)).collect();
                let _ = writeln!(out, "{key} = [{}]{note}", list.join(", "));
            }
            Kind::Switch | Kind::Count => {
                let value = values.first().map_or("false", String::as_str);
                let _ = writeln!(out, "{key} = {value}{note}");
            }
            Kind::One => match values.first() {
                Some(value) => {
                    let _ = writeln!(out, "{key} = {}{note}", quote(value));
                }
                None => {
                    let _ = writeln!(out, "# {key}: not set");
                }
            },
        }
    }
    out.push('\n');
}

/// A TOML integer when `value` is all digits, else a TOML basic string
/// (JSON's escapes are TOML's). A file may give either for any value.
fn quote(value: &str) -> String {
    if !value.is_empty() && value.len() < 19 && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.to_owned();
    }
    serde_json::to_string(value).expect("a string serializes")
}

/// A TOML type name with its article: `a string`, `an array`.
fn article(type_name: &str) -> String {
    let an = type_name.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {type_name}", if an { "an" } else { "a" })
}

/// Whether a file may set `arg`: not `--help`, `--version` or `--config`.
fn configurable(arg: &Arg) -> bool {
    !matches!(
        arg.get_action(),
        ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong
    ) && !matches!(arg.get_action(), ArgAction::Version)
        && arg.get_id() != CONFIG_FLAG
}

/// What TOML a flag takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One value: a string or an integer.
    One,
    /// A repeatable flag: an array of strings or integers.
    Many,
    /// A switch: a boolean.
    Switch,
    /// A counted flag: an integer (how many times).
    Count,
}

fn value_kind(arg: &Arg) -> Kind {
    match arg.get_action() {
        ArgAction::Append => Kind::Many,
        ArgAction::SetTrue | ArgAction::SetFalse => Kind::Switch,
        ArgAction::Count => Kind::Count,
        _ => Kind::One,
    }
}

/// Reads one file's tables, with the text for line numbers.
struct Parser<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Parser<'_> {
    /// 1-based line of byte offset `span.start`.
    fn line(&self, span: Range<usize>) -> usize {
        let start = span.start.min(self.text.len());
        self.text.as_bytes()[..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn syntax(&self, err: &toml::de::Error) -> ConfigError {
        let mut message = err.message().lines().collect::<Vec<_>>().join("; ");
        // The parser says which key only through the span.
        if message == "duplicate key"
            && let Some(key) = err.span().and_then(|span| self.text.get(span))
        {
            message = format!("duplicate key \"{key}\"");
        }
        ConfigError::Syntax {
            path: self.path.to_owned(),
            line: err.span().map_or(1, |span| self.line(span)),
            message,
        }
    }

    fn key_error(&self, key: &str, span: Range<usize>, problem: KeyProblem) -> ConfigError {
        ConfigError::Key {
            path: self.path.to_owned(),
            line: self.line(span),
            key: key.to_owned(),
            problem,
        }
    }

    /// The entries of table `name`, each checked against `sub`'s flags.
    fn table(
        &self,
        name: &str,
        sub: &Command,
        table: &DeTable<'_>,
    ) -> Result<Vec<Entry>, ConfigError> {
        let mut entries = Vec::new();
        for (key, value) in table {
            let key_name = key.get_ref().as_ref();
            let dotted = format!("{name}.{key_name}");
            let flag = key_name.replace('_', "-");
            let arg = sub
                .get_arguments()
                .filter(|a| configurable(a))
                .find(|a| a.get_long() == Some(flag.as_str()))
                .ok_or_else(|| {
                    let problem = KeyProblem::UnknownKey {
                        table: name.to_owned(),
                        flag: flag.clone(),
                    };
                    self.key_error(&dotted, key.span(), problem)
                })?;
            let args = self
                .entry_args(arg, value)
                .map_err(|(span, problem)| self.key_error(&dotted, span, problem))?;
            entries.push(Entry {
                id: arg.get_id().as_str().to_owned(),
                long: flag,
                args,
            });
        }
        Ok(entries)
    }

    /// The command-line arguments `value` stands for as flag `arg`, each value
    /// checked by the flag's own parser; on error, the span to blame.
    fn entry_args(
        &self,
        arg: &Arg,
        value: &Spanned<DeValue<'_>>,
    ) -> Result<Vec<String>, (Range<usize>, KeyProblem)> {
        let long = arg.get_long().expect("configurable flags are long");
        let type_error = |expected| {
            let found = value.get_ref().type_str();
            (value.span(), KeyProblem::Type { expected, found })
        };
        match (value_kind(arg), value.get_ref()) {
            (Kind::One, _) => {
                let v = scalar(value).ok_or_else(|| type_error("a string or an integer"))?;
                check(arg, &v).map_err(|p| (value.span(), p))?;
                Ok(vec![format!("--{long}={v}")])
            }
            (Kind::Many, DeValue::Array(items)) => items
                .iter()
                .map(|item| {
                    let v = scalar(item).ok_or_else(|| {
                        let found = item.get_ref().type_str();
                        let expected = "strings or integers in the array";
                        (item.span(), KeyProblem::Type { expected, found })
                    })?;
                    check(arg, &v).map_err(|p| (item.span(), p))?;
                    Ok(format!("--{long}={v}"))
                })
                .collect(),
            (Kind::Many, _) => Err(type_error("an array (the flag can be repeated)")),
            (Kind::Switch, DeValue::Boolean(on)) => {
                // SetFalse flags are present to mean false.
                let present = *on == matches!(arg.get_action(), ArgAction::SetTrue);
                Ok(if present {
                    vec![format!("--{long}")]
                } else {
                    Vec::new()
                })
            }
            (Kind::Switch, _) => Err(type_error("a boolean")),
            (Kind::Count, DeValue::Integer(n)) => {
                let span = value.span();
                let n = u8::from_str_radix(n.as_str(), n.radix()).map_err(|e| {
                    let reason = e.to_string();
                    let value = n.as_str().to_owned();
                    (span.clone(), KeyProblem::Invalid { value, reason })
                })?;
                Ok(vec![format!("--{long}"); n.into()])
            }
            (Kind::Count, _) => Err(type_error("an integer")),
        }
    }
}

/// A string or an integer as the flag would get it; `None` for other types.
fn scalar(value: &Spanned<DeValue<'_>>) -> Option<String> {
    match value.get_ref() {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(n) => i128::from_str_radix(n.as_str(), n.radix())
            .ok()
            .map(|n| n.to_string()),
        _ => None,
    }
}

/// Runs `arg`'s value parser on `value`, as clap does on the command line:
/// by parsing `--flag=value` with a command that has only that flag.
fn check(arg: &Arg, value: &str) -> Result<(), KeyProblem> {
    // Named by the id: clap takes only static strings for long names here.
    let id = arg.get_id().clone();
    let flag = format!("--{id}={value}");
    let probe = Arg::new(id.clone())
        .long(id)
        .action(ArgAction::Set)
        .ignore_case(arg.is_ignore_case_set())
        .value_parser(arg.get_value_parser().clone());
    Command::new("connmirror")
        .arg(probe)
        .try_get_matches_from(["connmirror".to_owned(), flag])
        .map(drop)
        .map_err(|err| KeyProblem::Invalid {
            value: value.to_owned(),
            reason: invalid_reason(&err),
        })
}

/// Why clap's parser rejected a value: the parser's own error, or the
/// values it accepts.
fn invalid_reason(err: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(err) {
        return source.to_string();
    }
    match err.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) => format!("expected one of {}", valid.join(", ")),
        _ => first_line(err),
    }
}

#[cfg(test)]
mod tests;
