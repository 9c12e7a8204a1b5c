//! The command line of gantry: clap types only. Parsing of values into domain types happens in
//! `gantry-ops`, so errors there can name the flag and the value.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Daemonless, reproducible OCI image builder.
#[derive(Debug, Parser)]
#[command(name = "gantry", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The store directory (default: $XDG_CACHE_HOME/gantry, else ~/.cache/gantry).
    #[arg(long, global = true, env = "GANTRY_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Compression threads (never changes the output bytes).
    #[arg(
        short = 'j',
        long,
        global = true,
        env = "GANTRY_JOBS",
        value_name = "N"
    )]
    pub jobs: Option<usize>,
    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// A registry (host[:port]) that may be reached over plain HTTP or with unverified TLS.
    /// Repeatable; adds to the project's `insecure-registries`.
    #[arg(long = "insecure-registry", global = true, value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Extra CA certificate for a registry: HOST=PEM_FILE. Repeatable.
    #[arg(long = "registry-ca", global = true, value_name = "HOST=FILE")]
    pub registry_ca: Vec<String>,
    /// Seconds a registry request for a manifest or token may take (default 120), and the
    /// floor of a blob request's deadline, which grows by 1 s per 32 KiB. Overrides
    /// `registry-timeout` in [settings].
    #[arg(
        long,
        global = true,
        env = "GANTRY_REGISTRY_TIMEOUT",
        value_name = "SECONDS"
    )]
    pub registry_timeout: Option<u64>,
    /// The credentials file (default: $REGISTRY_AUTH_FILE, else
    /// $XDG_RUNTIME_DIR/containers/auth.json, else the Docker config).
    #[arg(long, global = true, env = "REGISTRY_AUTH_FILE", value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Read the layer blobs that an OCI layout lacks from the registry its manifest's
    /// org.opencontainers.image.base.name annotation names. Shallow layouts that gantry wrote
    /// itself are followed without it; a layout from elsewhere could name any host.
    #[arg(long, global = true)]
    pub follow_base_name: bool,
    /// The OCI runtime for build steps and `gantry run`: crun, runc or a path (default: the
    /// first that works here).
    #[arg(long, global = true, env = "GANTRY_RUNTIME", value_name = "RUNTIME")]
    pub runtime: Option<String>,
    /// A registry repository (host[:port]/path) to read layer and step results from before
    /// building them (read-only). Overrides `cache-from` in [settings].
    #[arg(long, global = true, value_name = "REPO")]
    pub cache_from: Option<String>,
    /// A registry repository to read results from and write local results back to.
    /// Overrides `cache-to` in [settings].
    #[arg(long, global = true, value_name = "REPO")]
    pub cache_to: Option<String>,
    /// Cap on the decompressed size of one layer read from a tar or an image (layer imports,
    /// unpack, run, steps), such as 100GiB (default 64GiB). Overrides `max-layer-size` in
    /// [settings].
    #[arg(long, global = true, value_name = "SIZE")]
    pub max_layer_size: Option<String>,
    /// Cap on the decompressed size of all the layers of one image (default 256GiB).
    /// Overrides `max-image-size` in [settings].
    #[arg(long, global = true, value_name = "SIZE")]
    pub max_image_size: Option<String>,
    /// Cap on how many times larger than its compressed bytes a layer may decompress, past its
    /// first 64 MiB (default 1000; deflate cannot exceed ~1032, so only streams of almost
    /// nothing but zeros come near it). Overrides `max-ratio` in [settings].
    #[arg(long, global = true, value_name = "N")]
    pub max_ratio: Option<u64>,
}

/// gantry's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a layer blob from files, directories, a tar or an arbitrary file.
    ///
    /// Prints the layer info JSON (media type, digest, size, diffId, annotations, history) on
    /// stdout unless --info is given. The blob goes into the store and, with --output, to a file.
    Layer(LayerArgs),
    /// Assemble an image from a base and layer infos into an OCI image layout.
    Image(ImageArgs),
    /// Show an image of an OCI layout, a layer blob or a layer info file.
    Inspect(InspectArgs),
    /// List the files of a layer or of an image.
    Ls(LsArgs),
    /// Build the images (or the named targets) of a gantry.toml project.
    ///
    /// Targets build in dependency order, independent ones in parallel (up to --jobs at
    /// once). Layers whose inputs did not change come from the cache without any tar or
    /// compression work. Images are written as OCI layouts under the output directory
    /// (gantry-out/<image> by default).
    Build(BuildArgs),
    /// Remove the image layouts a project's build wrote.
    Clean(CleanArgs),
    /// Pin the tags of a project's pull targets to digests in gantry.lock.
    Lock(LockArgs),
    /// Run a command in an image (a project image, or any transport reference) with crun or
    /// runc; the container is removed afterwards and its exit code is gantry's.
    Run(RunArgs),
    /// Unpack an image's filesystem into a directory (applying whiteouts; every path resolved
    /// inside the directory; every layer verified before the directory appears). The directory
    /// must be empty or absent; it is left private (0700).
    Unpack(UnpackArgs),
    /// Push project images to their tags, or one image to the references given.
    Push(PushArgs),
    /// Copy an image between transports (oci:, oci-archive:, docker-archive:, docker://),
    /// keeping its bytes and digests.
    Copy(CopyArgs),
    /// Write a project image (or any image) completely, fetching what is still remote.
    Export(ExportArgs),
    /// Download an image from a registry.
    Pull(PullArgs),
    /// Store credentials for a registry.
    Login(LoginArgs),
    /// Remove stored credentials for a registry.
    Logout(LogoutArgs),
    /// Check that every blob in the store matches its digest and every reference resolves.
    Fsck(FsckArgs),
    /// Remove blobs that nothing references.
    Gc(GcArgs),
}

/// `gantry layer`.
#[derive(Debug, Args)]
pub struct LayerArgs {
    /// A layer spec file (TOML, or JSON if it ends in .json); flags add to it.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// Add a file: IMAGE_PATH=SOURCE.
    #[arg(long = "file", value_name = "PATH=SRC")]
    pub files: Vec<String>,
    /// Add a directory tree: IMAGE_PATH=SOURCE_DIR.
    #[arg(long = "dir", value_name = "PATH=SRC")]
    pub dirs: Vec<String>,
    /// Only include tree entries matching this glob (for --dir; repeatable).
    #[arg(long = "include", value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out tree entries matching this glob (for --dir; repeatable).
    #[arg(long = "exclude", value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Add a file with inline content: IMAGE_PATH=TEXT.
    #[arg(long = "content", value_name = "PATH=TEXT")]
    pub content: Vec<String>,
    /// Add a symlink: IMAGE_PATH=TARGET.
    #[arg(long = "symlink", value_name = "PATH=TARGET")]
    pub symlinks: Vec<String>,
    /// Add a hard link to another file of the layer: IMAGE_PATH=TARGET_PATH.
    #[arg(long = "hardlink", value_name = "PATH=TARGET")]
    pub hardlinks: Vec<String>,
    /// Add an empty directory.
    #[arg(long = "empty-dir", value_name = "PATH")]
    pub empty_dirs: Vec<String>,
    /// Delete a path of lower layers (a whiteout).
    #[arg(long = "whiteout", value_name = "PATH")]
    pub whiteouts: Vec<String>,
    /// Hide the lower-layer contents of a directory (an opaque whiteout).
    #[arg(long = "opaque", value_name = "PATH")]
    pub opaque: Vec<String>,
    /// Default mode of files (octal; default 0755 if executable, else 0644).
    #[arg(long, value_name = "OCTAL")]
    pub mode: Option<String>,
    /// Default mode of directories (octal; default 0755).
    #[arg(long, value_name = "OCTAL")]
    pub dir_mode: Option<String>,
    /// Default owner id (default 0).
    //
    // `allow_negative_numbers` here and below: `--uid -1` is a bad value of --uid and
    // `--mtime -5` a valid one, not an unknown flag `-1` or `-5`.
    #[arg(long, allow_negative_numbers = true)]
    pub uid: Option<u32>,
    /// Default group id (default 0).
    #[arg(long, allow_negative_numbers = true)]
    pub gid: Option<u32>,
    /// Default owner name.
    #[arg(long)]
    pub uname: Option<String>,
    /// Default group name.
    #[arg(long)]
    pub gname: Option<String>,
    /// Default mtime: epoch seconds or RFC 3339 (default SOURCE_DATE_EPOCH, else 0).
    #[arg(long, allow_negative_numbers = true)]
    pub mtime: Option<String>,
    /// Metadata for one path: IMAGE_PATH=JSON, e.g. /app/run='{"mode":"0755","uid":1000}'.
    #[arg(long = "metadata", value_name = "PATH=JSON")]
    pub metadata: Vec<String>,
    /// The layer goes on a base image (or on other layers): leave out the parent directories
    /// it does not describe, so the base's keep their modes and owners (`/tmp` stays 1777).
    /// Without it, missing parents are root-owned 0755 entries, right for the first layer of a
    /// scratch image. (`--no-parents` is the older name.)
    #[arg(long, alias = "no-parents")]
    pub on_base: bool,
    /// Take this metadata from the sources on disk: mode, owner, mtime, xattrs
    /// (comma-separated; xattrs: user.* and security.capability). Off by default, because it
    /// makes the layer depend on the umask, owner and time of the source files; meant for
    /// packaging a prepared root filesystem.
    #[arg(long, value_delimiter = ',', value_name = "WHAT")]
    pub preserve: Vec<String>,
    /// gzip, zstd or none.
    #[arg(long, value_name = "NAME")]
    pub compression: Option<String>,
    /// Compression level (gzip 1-12, zstd 1-19).
    #[arg(long, allow_negative_numbers = true)]
    pub level: Option<i32>,
    /// Use an existing tar (plain, gzip or zstd) as the layer.
    #[arg(long, value_name = "FILE")]
    pub tar: Option<PathBuf>,
    /// Recompress --tar with --compression instead of keeping its bytes.
    #[arg(long, requires = "tar")]
    pub recompress: bool,
    /// Use an arbitrary file as the blob (an OCI artifact layer); needs --media-type.
    #[arg(long, value_name = "FILE")]
    pub artifact: Option<PathBuf>,
    /// Media type of --artifact, or an override for tar layers.
    #[arg(long, value_name = "TYPE")]
    pub media_type: Option<String>,
    /// Descriptor annotation KEY=VALUE.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// File of KEY=VALUE annotation lines.
    #[arg(long, value_name = "FILE")]
    pub annotations_file: Option<PathBuf>,
    /// The history line's created_by (default "gantry layer").
    #[arg(long, value_name = "TEXT")]
    pub created_by: Option<String>,
    /// The history line's comment.
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    /// Also write the blob to this file (hard-linked from the store when possible).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Write the layer info JSON to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub info: Option<PathBuf>,
}

/// `gantry image`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// scratch, or an image: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REF],
    /// docker://REF, or an existing layout DIR[:TAG].
    #[arg(long, default_value = "scratch", value_name = "BASE")]
    pub base: String,
    /// Platform to pick from an index base and to give a scratch image (default: this host's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// A layer: its info JSON, optionally with the blob file (INFO=BLOB) when it is not in the
    /// store. Repeatable, base first.
    #[arg(long = "layer", value_name = "INFO[=BLOB]")]
    pub layers: Vec<String>,
    /// Entrypoint: a JSON array, or one argument per flag.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub entrypoint: Vec<String>,
    /// Cmd: a JSON array, or one argument per flag.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub cmd: Vec<String>,
    /// Environment KEY=VALUE, merged by key with the base's.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// User (name, uid, user:group or uid:gid).
    #[arg(long)]
    pub user: Option<String>,
    /// Working directory.
    #[arg(long)]
    pub workdir: Option<String>,
    /// Exposed port (8080, 8080/tcp, 53/udp).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<String>,
    /// Volume path.
    #[arg(long = "volume", value_name = "PATH")]
    pub volumes: Vec<String>,
    /// Label KEY=VALUE.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Stop signal (SIGTERM, 15).
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Operating system of the config.
    #[arg(long)]
    pub os: Option<String>,
    /// Architecture of the config.
    #[arg(long)]
    pub arch: Option<String>,
    /// Architecture variant of the config.
    #[arg(long)]
    pub variant: Option<String>,
    /// Author of the image.
    #[arg(long)]
    pub author: Option<String>,
    /// Manifest annotation KEY=VALUE.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Build an OCI artifact of this type (empty config; layers may be any blobs).
    #[arg(long, value_name = "TYPE")]
    pub artifact_type: Option<String>,
    /// The OCI layout directory to write (replaced atomically).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// The tag of the image in the layout.
    #[arg(short, long, default_value = "latest")]
    pub tag: String,
    /// Write the image metadata JSON to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub metadata: Option<PathBuf>,
}

/// `gantry inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// An image (oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REF],
    /// docker://REF, or an existing layout DIR[:TAG]), a layer blob or a layer info file.
    pub target: String,
    /// Platform to pick from an index.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `gantry ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// An image (oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REF],
    /// docker://REF, or an existing layout DIR[:TAG]), a layer blob or a layer info file.
    pub target: String,
    /// Platform to pick from an index.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// For an image: list each layer's entries instead of the merged filesystem.
    #[arg(long)]
    pub layers: bool,
    /// Machine-readable output (one JSON object per line).
    #[arg(long)]
    pub json: bool,
}

/// Where the project file is.
#[derive(Debug, Args)]
pub struct ProjectArgs {
    /// Run in this directory (where gantry.toml is looked for).
    #[arg(short = 'C', long = "directory", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The project file (default: gantry.toml in the directory).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// `gantry build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The project.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Targets to build (layers or images); default: every image.
    pub targets: Vec<String>,
    /// Print a JSON summary on stdout (per image: digest, output, layers with cache hits;
    /// per target: start and end times).
    #[arg(long)]
    pub json: bool,
    /// Resolve tags that gantry.lock does not pin, now (the build is then not reproducible).
    #[arg(long)]
    pub allow_unpinned: bool,
    /// Leave base layers that are only in a registry out of the output layouts (no download;
    /// only gantry's own readers and `gantry push` can use such a layout). Same as
    /// `shallow = true` in [settings].
    #[arg(long)]
    pub shallow: bool,
}

/// `gantry run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The project (for image targets).
    #[command(flatten)]
    pub project: ProjectArgs,
    /// An image target of the project (built first if needed), or a transport reference:
    /// oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE, docker://REF.
    pub image: String,
    /// The command and its arguments (after `--`); default: the image's entrypoint and cmd.
    /// With an entrypoint, they replace the cmd, as `docker run` does.
    #[arg(last = true)]
    pub args: Vec<String>,
    /// Environment: KEY=VALUE, merged with the image's. Repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory (default: the image's, else /).
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User: uid[:gid] or a name from the image's /etc/passwd (default: the image's).
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
    /// Share the host's network (default: loopback only).
    #[arg(long)]
    pub network: bool,
    /// Platform to pick from an index (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Resolve tags that gantry.lock does not pin, now.
    #[arg(long)]
    pub allow_unpinned: bool,
}

/// `gantry unpack`.
#[derive(Debug, Args)]
pub struct UnpackArgs {
    /// The image: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE, docker://REF.
    pub image: String,
    /// The directory to unpack into (created, mode 0700; an empty one is replaced, a
    /// non-empty one refused). It appears only once every layer verified.
    pub dest: PathBuf,
    /// Platform to pick from an index (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Character and block devices of the image: placeholder (an empty file with mode 0000
    /// in their place), skip (left out), or create (real device nodes; needs root).
    #[arg(
        long,
        value_name = "POLICY",
        default_value = "placeholder",
        value_parser = ["create", "placeholder", "skip"]
    )]
    pub devices: String,
}

/// `gantry lock`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The project.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Move pins to what their tags point to now (all, or the named pull targets).
    #[arg(long)]
    pub update: bool,
    /// Pull targets to update (with --update).
    pub names: Vec<String>,
}

/// `gantry push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The project.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Image targets (default: every image with tags), or one image target (or transport
    /// reference such as oci:DIR:TAG) followed by the references to push it to.
    pub args: Vec<String>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Resolve tags that gantry.lock does not pin, now.
    #[arg(long)]
    pub allow_unpinned: bool,
}

/// `gantry copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Source: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REF], docker://REF.
    pub source: String,
    /// Destination, in the same syntax.
    pub destination: String,
    /// Platform to pick from an index (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Recompress the layers (gzip, zstd or none); this changes their digests.
    #[arg(long, value_name = "COMPRESSION")]
    pub recompress: Option<String>,
}

/// `gantry export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The project.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// An image target of the project, or an image reference (oci:DIR[:TAG],
    /// oci-archive:FILE[:TAG], docker-archive:FILE[:REF], docker://REF).
    pub image: String,
    /// oci, oci-archive or docker-archive.
    #[arg(long, default_value = "oci")]
    pub format: String,
    /// Where to write it (a directory for oci, a file otherwise).
    #[arg(short, long, value_name = "PATH")]
    pub output: PathBuf,
    /// The tag (or, for docker-archive, the reference) to record.
    #[arg(short, long)]
    pub tag: Option<String>,
    /// Resolve tags that gantry.lock does not pin, now.
    #[arg(long)]
    pub allow_unpinned: bool,
}

/// `gantry pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image: [docker://]REF.
    pub reference: String,
    /// Where to put it, in transport syntax (default: oci:<repository name>:<tag>).
    #[arg(short, long, value_name = "DEST")]
    pub output: Option<String>,
    /// Platform to pick from an index (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
}

/// `gantry login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The registry (host[:port]).
    pub registry: String,
    /// The user name.
    #[arg(short, long)]
    pub username: String,
    /// Read the password from stdin (the only way: it never goes on a command line).
    #[arg(long, required = true)]
    pub password_stdin: bool,
}

/// `gantry logout`.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The registry (host[:port]).
    pub registry: String,
}

/// `gantry clean`.
#[derive(Debug, Args)]
pub struct CleanArgs {
    /// The project.
    #[command(flatten)]
    pub project: ProjectArgs,
}

/// `gantry fsck`.
#[derive(Debug, Args)]
pub struct FsckArgs {
    /// Remove corrupt blobs and stray files, and fix blob permissions.
    #[arg(long)]
    pub repair: bool,
}

/// `gantry gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Report what would be removed without removing it.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep build-cache entries and unpacked images used within this many days (and their
    /// blobs); older ones are dropped. 0 drops the whole build cache and every unpacked image.
    #[arg(long, default_value_t = 7, value_name = "DAYS")]
    pub keep_cache: u64,
}
