use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use switchboard::config::{Config, Overrides};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Switchboard messaging gateway (OpenClaw Gateway protocol v4)"
)]
struct Cli {
    /// Log format on stderr (filter with RUST_LOG, default `info`).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Connect, call one method, print its payload as JSON.
    Call(CallArgs),
    /// Work with channel plugin files.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Print the message log, then follow new messages (one JSON object a
    /// line); resumes by itself after a reconnect, without gaps or doubles.
    Tail(TailArgs),
    /// Work with the message log's database.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy the message log, consistently, while the daemon runs.
    Backup {
        /// The new file (it must not exist).
        file: PathBuf,
        /// Config file (TOML), for `state_dir`. Default: ./switchboard.toml when present.
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
        /// State directory (overrides the config's).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct TailArgs {
    /// Print every message after this `messageSeq` (default: the last `--lines`).
    #[arg(long)]
    after: Option<u64>,
    /// How many of the newest messages to print first, without `--after`.
    #[arg(long, default_value_t = 10)]
    lines: usize,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Load a plugin file the way the daemon would and print what it is (or why it is refused).
    Check {
        /// The `.wasm` component.
        file: PathBuf,
    },
    /// Write a new plugin crate that builds, passes `plugins check` and
    /// has a test running it in the daemon.
    New {
        /// The plugin id (and crate name): [a-z0-9-].
        name: String,
        /// Where to write it (default: ./<name>).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The SDK as a path dependency (default: this checkout's, else
        /// the registry's `switchboard-sdk`).
        #[arg(long)]
        sdk: Option<PathBuf>,
        /// The test kit as a path dependency (default as for --sdk).
        #[arg(long)]
        testkit: Option<PathBuf>,
    },
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// Config file (TOML). Default: ./switchboard.toml when present.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Port for HTTP and WebSocket (0 = any free port).
    #[arg(long, env = "SWITCHBOARD_PORT")]
    port: Option<u16>,
    /// `loopback`, `lan`, or an IP address.
    #[arg(long)]
    bind: Option<String>,
    /// Shared token clients must present.
    #[arg(long, env = "SWITCHBOARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Shared password clients may present instead of the token.
    #[arg(long, env = "SWITCHBOARD_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Plugins directory.
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// State directory (plugin key-value stores).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// Where an operator command connects, and with what.
#[derive(Args)]
struct ConnArgs {
    #[arg(long, default_value = "ws://127.0.0.1:18789")]
    url: String,
    #[arg(long, env = "SWITCHBOARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, env = "SWITCHBOARD_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

#[derive(Args)]
struct CallArgs {
    /// Method name, e.g. `health`.
    method: String,
    /// Params as a JSON object.
    #[arg(long, default_value = "{}")]
    params: String,
    #[command(flatten)]
    conn: ConnArgs,
    /// Overall timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout: u64,
}

/// Logs to stderr through a `LogSink` (a thread of its own writes the
/// lines, so a stalled reader of stderr never blocks a task).
fn init_logging(format: LogFormat) -> std::io::Result<()> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colours = std::io::stderr().is_terminal() && matches!(format, LogFormat::Text);
    let sink = switchboard::logsink::LogSink::spawn(std::io::stderr(), colours)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink)
        .with_ansi(colours);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match cli.command {
        Some(Command::Call(args)) => runtime.block_on(call(args)),
        Some(Command::Plugins(PluginsCommand::Check { file })) => {
            runtime.block_on(check_plugin(&file))
        }
        Some(Command::Plugins(PluginsCommand::New {
            name,
            dir,
            sdk,
            testkit,
        })) => {
            let built = switchboard::scaffold::Sources::from_build();
            let src = switchboard::scaffold::Sources {
                sdk: sdk.or(built.sdk),
                testkit: testkit.or(built.testkit),
            };
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            match switchboard::scaffold::write(&name, &dir, &src) {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    println!(
                        "next: cd {} && cargo build --target wasm32-wasip2 --release && cargo test",
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Some(Command::Tail(args)) => runtime.block_on(tail(args)),
        Some(Command::Store(StoreCommand::Backup {
            file,
            config,
            state_dir,
        })) => backup(&file, config, state_dir),
        Some(Command::Serve(args)) => serve_logged(&runtime, cli.log_format, args),
        None => serve_logged(&runtime, cli.log_format, cli.serve),
    };
    // Dropping the runtime would wait, without bound, for every blocking
    // task still running (a read of a config file that is a pipe nobody
    // writes, a query): the daemon would log its last shutdown step and
    // never exit. What such a task was doing is not needed any more.
    runtime.shutdown_timeout(RUNTIME_GRACE);
    // The last lines (the shutdown's) are written before the exit.
    switchboard::logsink::flush(LOG_GRACE);
    code
}

/// Starts the log, then serves.
fn serve_logged(runtime: &tokio::runtime::Runtime, format: LogFormat, args: ServeArgs) -> ExitCode {
    match init_logging(format) {
        Ok(()) => runtime.block_on(serve(args)),
        Err(e) => {
            eprintln!("error: cannot start the log writer thread: {e}");
            ExitCode::from(2)
        }
    }
}

/// How long the exit waits for the log's last lines to be written.
const LOG_GRACE: Duration = Duration::from_secs(2);

/// How long the exit waits for blocking tasks still running.
const RUNTIME_GRACE: Duration = Duration::from_millis(500);

async fn serve(args: ServeArgs) -> ExitCode {
    let overrides = Overrides {
        port: args.port,
        bind: args.bind,
        token: args.token,
        password: args.password,
        plugins_dir: args.plugins,
        state_dir: args.state_dir,
    };
    let source = switchboard::config::Source::new(args.config.clone(), overrides);
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => return fail(&e, 2),
    };
    match switchboard::serve(config, source).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, 1),
    }
}

/// How long a failed start waits for its log line before printing the
/// error plainly.
const FAIL_LOG_GRACE: Duration = Duration::from_millis(300);

/// A start that failed: the error is logged, then (once the log has
/// written it, so that the two keep their order) printed plainly as the
/// last line, which a log filter or JSON format cannot hide.
fn fail(e: &anyhow::Error, code: u8) -> ExitCode {
    tracing::error!("{e:#}");
    switchboard::logsink::flush(FAIL_LOG_GRACE);
    eprintln!("error: {e:#}");
    ExitCode::from(code)
}

async fn call(args: CallArgs) -> ExitCode {
    let params: serde_json::Value = match serde_json::from_str(&args.params) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: --params is not valid JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = switchboard::client::CallOptions {
        url: args.conn.url,
        method: args.method,
        params,
        token: args.conn.token.filter(|t| !t.is_empty()),
        password: args.conn.password.filter(|p| !p.is_empty()),
        timeout: Duration::from_millis(args.timeout),
    };
    match switchboard::client::call(opts).await {
        Ok(payload) => {
            out(&serde_json::to_string_pretty(&payload).unwrap_or_else(|_| payload.to_string()));
            ExitCode::SUCCESS
        }
        // The gateway's message may carry a plugin's or a server's text.
        Err(e @ switchboard::client::CallError::Gateway { .. }) => {
            eprintln!("error: {}", switchboard::logsink::printable(&e.to_string()));
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {}", switchboard::logsink::printable(&e.to_string()));
            ExitCode::from(3)
        }
    }
}

async fn tail(args: TailArgs) -> ExitCode {
    let opts = switchboard::client::TailOptions {
        url: args.conn.url,
        token: args.conn.token.filter(|t| !t.is_empty()),
        password: args.conn.password.filter(|p| !p.is_empty()),
        after: args.after,
        lines: args.lines,
    };
    let e = switchboard::client::tail(opts, &mut |m| out(&m.to_string())).await;
    eprintln!("error: {}", switchboard::logsink::printable(&e.to_string()));
    ExitCode::from(1)
}

fn backup(file: &std::path::Path, config: Option<PathBuf>, state_dir: Option<PathBuf>) -> ExitCode {
    let overrides = Overrides {
        state_dir,
        ..Default::default()
    };
    let config = match Config::load(config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match switchboard::store::sqlite::backup(&config.state_dir(), file) {
        Ok(()) => {
            out(&format!("backed up the message log to {}", file.display()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn check_plugin(file: &std::path::Path) -> ExitCode {
    use switchboard::plugins::{Limits, Runtime};
    let rt = match Runtime::new(Limits::default()) {
        Ok(r) => std::sync::Arc::new(r),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match rt.load(file).await {
        Ok(p) => {
            // What the plugin says of itself is printed escaped: a hostile
            // file must not drive the terminal of whoever checks it.
            use switchboard::logsink::printable;
            let i = &p.info;
            println!(
                "ok: {} {} ({}) from {}",
                i.id,
                printable(&i.version),
                printable(&i.name),
                file.display()
            );
            println!("  contract: switchboard:channel@{}", p.contract);
            let caps = i.capabilities.names();
            println!(
                "  capabilities: {}",
                if caps.is_empty() {
                    "none (text only)".to_string()
                } else {
                    caps.join(", ")
                }
            );
            println!("  description: {}", printable(&i.description));
            println!("  sha256: {}", p.hash);
            if i.network.is_empty() {
                println!("  network: none requested");
            } else {
                println!("  network: {}", printable(&i.network.join(", ")));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            ExitCode::from(1)
        }
    }
}

/// Prints a line to stdout; a closed pipe (`| head`) is not an error.
fn out(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}
