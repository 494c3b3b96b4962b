//! The container images `make images` builds (e2e/scripts/images.sh), read
//! from the archives it leaves in the cache: each is named as the
//! CommerceStack's default and the chart expect, runs its binary as user
//! 65532, carries the OCI labels of the workspace version, holds the base's
//! CA bundle, zoneinfo and users but no shell, and its binary starts inside
//! the unpacked image (every shared library it loads is there).
//!
//! The tests never build: a missing archive fails them with the command that
//! builds it. Archives live in `$COMMERCE_CACHE_DIR/images` (default
//! `$HOME/.cache/commerce-stack/images`); they are docker-archive tars whose
//! layers are uncompressed tars.

use std::{
    collections::BTreeMap,
    fs::File,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};
use commerce_api::crd::stack::DEFAULT_IMAGE_REPOSITORY;
use commerce_e2e::unique_name;
use serde::Deserialize;

/// The workspace version: the tag of both product images.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `nonroot` user and group of the base (`USER 65532:65532`).
const NONROOT: &str = "65532";

/// Names of shells and shell-providing multi-call binaries; none may be in
/// an image.
const SHELLS: &[&str] =
    &["sh", "bash", "dash", "ash", "busybox", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "toybox"];

/// Files whose contents the checks read (all small).
const READ_CONTENTS: &[&str] = &["etc/passwd", "etc/group", "etc/ssl/certs/ca-certificates.crt"];

/// The repository root (this crate lives in `e2e/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Where `make images` writes the archives: `$COMMERCE_CACHE_DIR/images`, as
/// e2e/infra.env defaults it.
fn images_dir() -> Result<PathBuf> {
    let cache = match std::env::var_os("COMMERCE_CACHE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").context("neither COMMERCE_CACHE_DIR nor HOME is set")?;
            PathBuf::from(home).join(".cache/commerce-stack")
        }
    };
    Ok(cache.join("images"))
}

/// The archive of product image `name` (commerce or commerce-operator).
fn product_archive(name: &str) -> Result<PathBuf> {
    let path = images_dir()?.join(format!("{name}-{VERSION}.tar"));
    ensure!(
        path.is_file(),
        "{} is missing: run `make images` first (it builds the images into the cache)",
        path.display()
    );
    Ok(path)
}

/// The newest pause image archive; its tag is catatonit's version, which the
/// tests do not know.
fn pause_archive() -> Result<PathBuf> {
    let dir = images_dir()?;
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    if dir.is_dir() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with("commerce-pause-") && name.ends_with(".tar") {
                let modified = std::fs::metadata(&path)?.modified()?;
                if newest.as_ref().is_none_or(|(time, _)| modified > *time) {
                    newest = Some((modified, path));
                }
            }
        }
    }
    newest.map(|(_, path)| path).with_context(|| {
        format!(
            "no commerce-pause-*.tar in {}: run `make images` first (it builds the images into the cache)",
            dir.display()
        )
    })
}

/// One image of a docker-archive's `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    /// File name of the image config in the archive.
    config: String,
    /// The names `ctr images import` gives the image.
    repo_tags: Vec<String>,
    /// File names of the layer tars, bottom first.
    layers: Vec<String>,
}

/// The part of an image config a container runtime uses.
#[derive(Debug, Deserialize)]
struct ImageConfig {
    config: RunConfig,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    user: Option<String>,
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// One file of the image's root, as the layers leave it.
#[derive(Debug)]
struct RootEntry {
    kind: tar::EntryType,
    mode: u32,
    /// The target of a symbolic link.
    link: Option<String>,
}

/// An image read from its archive: name, config and root file system.
#[derive(Debug)]
struct Image {
    archive: PathBuf,
    repo_tags: Vec<String>,
    config: RunConfig,
    /// Paths relative to `/`, without a leading `./` or trailing `/`.
    root: BTreeMap<String, RootEntry>,
    /// Contents of the READ_CONTENTS files present in the root.
    contents: BTreeMap<String, Vec<u8>>,
    layers: Vec<String>,
}

/// `./usr/bin/` -> `usr/bin`.
fn normalize(path: &Path) -> String {
    let text = path.to_string_lossy();
    text.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/').to_owned()
}

impl Image {
    fn read(archive: &Path) -> Result<Self> {
        // First pass: the small JSON documents (manifest and config).
        let mut documents = BTreeMap::new();
        let mut outer = tar::Archive::new(open(archive)?);
        for entry in outer.entries().with_context(|| format!("reading {}", archive.display()))? {
            let mut entry = entry?;
            let name = normalize(&entry.path()?);
            if name.ends_with(".json") && entry.header().entry_type().is_file() {
                let mut text = String::new();
                entry
                    .read_to_string(&mut text)
                    .with_context(|| format!("{name} in {}", archive.display()))?;
                documents.insert(name, text);
            }
        }
        let manifest: Vec<ManifestEntry> =
            serde_json::from_str(documents.get("manifest.json").with_context(|| {
                format!("{} has no manifest.json: not a docker-archive", archive.display())
            })?)?;
        ensure!(manifest.len() == 1, "{} holds {} images, expected one", archive.display(), manifest.len());
        let manifest = manifest.into_iter().next().context("one image")?;
        let config: ImageConfig = serde_json::from_str(
            documents
                .get(&manifest.config)
                .with_context(|| format!("{} has no config {}", archive.display(), manifest.config))?,
        )?;

        // Second pass: stream each layer, bottom first, into one view of the root.
        let mut root = BTreeMap::new();
        let mut contents = BTreeMap::new();
        for layer in &manifest.layers {
            let mut outer = tar::Archive::new(open(archive)?);
            let mut found = false;
            for entry in outer.entries()? {
                let entry = entry?;
                if normalize(&entry.path()?) != *layer || !entry.header().entry_type().is_file() {
                    continue;
                }
                found = true;
                read_layer(entry, &mut root, &mut contents).with_context(|| {
                    format!(
                        "layer {layer} of {} (an uncompressed tar in a docker-archive)",
                        archive.display()
                    )
                })?;
                break;
            }
            ensure!(found, "{} lists layer {layer} but does not hold it", archive.display());
        }
        Ok(Self {
            archive: archive.to_owned(),
            repo_tags: manifest.repo_tags,
            config: config.config,
            root,
            contents,
            layers: manifest.layers,
        })
    }

    fn label(&self, key: &str) -> Result<&str> {
        self.config.labels.get(key).map(String::as_str).filter(|value| !value.is_empty()).with_context(|| {
            format!("{} has no label {key}: {:?}", self.archive.display(), self.config.labels)
        })
    }

    fn content(&self, path: &str) -> Result<String> {
        let bytes =
            self.contents.get(path).with_context(|| format!("{} has no /{path}", self.archive.display()))?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// Unpacks the layers into a new directory under the system's temp dir,
    /// keeping modes and owners (the tests run as root).
    fn unpack(&self) -> Result<Unpacked> {
        let dir = std::env::temp_dir().join(unique_name("commerce-image"));
        std::fs::create_dir_all(&dir)?;
        let unpacked = Unpacked(dir);
        for layer in &self.layers {
            let mut outer = tar::Archive::new(open(&self.archive)?);
            for entry in outer.entries()? {
                let entry = entry?;
                if normalize(&entry.path()?) == *layer && entry.header().entry_type().is_file() {
                    let mut inner = tar::Archive::new(entry);
                    inner.set_preserve_permissions(true);
                    inner.set_preserve_ownerships(true);
                    inner.unpack(&unpacked.0).with_context(|| format!("unpacking layer {layer}"))?;
                    break;
                }
            }
        }
        Ok(unpacked)
    }
}

fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("opening {}", path.display()))
}

fn read_layer<R: std::io::Read>(
    layer: R,
    root: &mut BTreeMap<String, RootEntry>,
    contents: &mut BTreeMap<String, Vec<u8>>,
) -> Result<()> {
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = normalize(&entry.path()?);
        if path.is_empty() {
            continue;
        }
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode()?;
        let link = entry.link_name()?.map(|target| target.to_string_lossy().into_owned());
        if READ_CONTENTS.contains(&path.as_str()) && kind.is_file() {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            contents.insert(path.clone(), bytes);
        }
        root.insert(path, RootEntry { kind, mode, link });
    }
    Ok(())
}

/// An unpacked image root, removed when dropped.
#[derive(Debug)]
struct Unpacked(PathBuf);

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `program args` inside `root` as user and group 65532; returns stdout.
fn run_in_root_as_nonroot(root: &Path, program: &str, args: &[&str]) -> Result<String> {
    let uid = std::fs::metadata("/proc/self").context("reading /proc/self")?.uid();
    ensure!(uid == 0, "running the image's binary in its root needs chroot, which needs root (uid is {uid})");
    let output = Command::new("chroot")
        .arg(format!("--userspec={NONROOT}:{NONROOT}"))
        .arg(root)
        .arg(program)
        .args(args)
        .output()
        .context("starting chroot")?;
    ensure!(
        output.status.success(),
        "{program} {} in the unpacked image failed ({}): a shared library missing from the base?\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs as `nonroot`, starts the binary, and is labelled with the version it
/// was built from.
fn check_product_config(image: &Image, binary: &str) -> Result<()> {
    let user = image.config.user.as_deref().unwrap_or_default();
    ensure!(
        user == format!("{NONROOT}:{NONROOT}") || user == NONROOT,
        "{}: User is {user:?}, expected {NONROOT}:{NONROOT}",
        image.archive.display()
    );
    let entrypoint = image.config.entrypoint.clone().unwrap_or_default();
    ensure!(
        entrypoint == [format!("/usr/local/bin/{binary}")],
        "{}: Entrypoint is {entrypoint:?}, expected [\"/usr/local/bin/{binary}\"]",
        image.archive.display()
    );
    ensure!(image.label("org.opencontainers.image.version")? == VERSION, "version label");
    ensure!(image.label("org.opencontainers.image.title")? == binary, "title label");
    ensure!(image.label("org.opencontainers.image.licenses")? == "Apache-2.0", "licenses label");
    for key in ["source", "revision", "created"] {
        image.label(&format!("org.opencontainers.image.{key}"))?;
    }
    Ok(())
}

/// The distroless-like base plus the binary: CA bundle, zoneinfo, the
/// nonroot user, a sticky /tmp, and no shell or other program.
fn check_product_root(image: &Image, binary: &str) -> Result<()> {
    let shown = image.archive.display();
    for (path, entry) in &image.root {
        let name = path.rsplit('/').next().unwrap_or(path);
        ensure!(!SHELLS.contains(&name), "{shown} contains a shell: /{path}");
        if let Some(target) = &entry.link {
            let target_name = target.rsplit('/').next().unwrap_or(target);
            ensure!(!SHELLS.contains(&target_name), "{shown}: /{path} links to a shell ({target})");
        }
        for programs in ["bin/", "sbin/", "usr/bin/", "usr/sbin/"] {
            ensure!(!path.starts_with(programs), "{shown} contains a program: /{path}");
        }
        if path.starts_with("usr/local/bin/") {
            ensure!(*path == format!("usr/local/bin/{binary}"), "{shown} has a second binary: /{path}");
        }
    }
    for shell in ["bin/sh", "usr/bin/sh", "bin/bash", "bin/busybox"] {
        ensure!(!image.root.contains_key(shell), "{shown} contains /{shell}");
    }

    let binary_entry = image
        .root
        .get(&format!("usr/local/bin/{binary}"))
        .with_context(|| format!("{shown} has no /usr/local/bin/{binary}"))?;
    ensure!(
        binary_entry.kind.is_file() && binary_entry.mode & 0o111 == 0o111,
        "{shown}: /usr/local/bin/{binary} is not an executable file ({binary_entry:?})"
    );

    let bundle = image.content("etc/ssl/certs/ca-certificates.crt")?;
    ensure!(
        bundle.matches("-----BEGIN CERTIFICATE-----").count() > 50,
        "{shown}: /etc/ssl/certs/ca-certificates.crt is not a CA bundle"
    );

    let zones = image.root.keys().filter(|path| path.starts_with("usr/share/zoneinfo/")).count();
    ensure!(zones > 100, "{shown} has {zones} files in /usr/share/zoneinfo, expected tzdata's");
    ensure!(image.root.contains_key("usr/share/zoneinfo/Europe/Berlin"), "{shown} has no Europe/Berlin zone");

    let passwd = image.content("etc/passwd")?;
    ensure!(
        passwd.lines().any(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            fields.get(2) == Some(&NONROOT) && fields.get(3) == Some(&NONROOT)
        }),
        "{shown}: /etc/passwd has no user {NONROOT} in group {NONROOT}:\n{passwd}"
    );
    let group = image.content("etc/group")?;
    ensure!(
        group.lines().any(|line| line.split(':').nth(2) == Some(NONROOT)),
        "{shown}: /etc/group has no group {NONROOT}:\n{group}"
    );

    let tmp = image.root.get("tmp").with_context(|| format!("{shown} has no /tmp"))?;
    ensure!(
        tmp.kind.is_dir() && tmp.mode & 0o7777 == 0o1777,
        "{shown}: /tmp is not a sticky 1777 directory ({tmp:?})"
    );
    Ok(())
}

/// The binary of `binary`'s image starts inside the unpacked image as
/// 65532 and reports the workspace version.
fn check_binary_starts(binary: &str) -> Result<()> {
    let image = Image::read(&product_archive(binary)?)?;
    let root = image.unpack()?;
    let stdout = run_in_root_as_nonroot(&root.0, &format!("/usr/local/bin/{binary}"), &["--version"])?;
    ensure!(stdout.contains(VERSION), "{binary} --version printed {stdout:?}, expected {VERSION}");
    Ok(())
}

/// The Helm chart's default operator image: `image.repository` of
/// values.yaml, tagged with the chart's appVersion.
fn chart_operator_image() -> Result<String> {
    let chart_dir = repo().join("charts/commerce-operator");
    let values: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart_dir.join("values.yaml"))?)?;
    let chart: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart_dir.join("Chart.yaml"))?)?;
    let repository = values["image"]["repository"].as_str().context("image.repository in values.yaml")?;
    let app_version = chart["appVersion"].as_str().context("appVersion in Chart.yaml")?;
    Ok(format!("{repository}:{app_version}"))
}

#[test]
fn commerce_image_has_the_name_a_commerce_stack_defaults_to() -> Result<()> {
    let image = Image::read(&product_archive("commerce")?)?;
    let expected = format!("{DEFAULT_IMAGE_REPOSITORY}:{VERSION}");
    ensure!(image.repo_tags == [expected.clone()], "tags {:?}, expected [{expected}]", image.repo_tags);
    Ok(())
}

#[test]
fn commerce_operator_image_has_the_name_the_chart_defaults_to() -> Result<()> {
    let image = Image::read(&product_archive("commerce-operator")?)?;
    let expected = chart_operator_image()?;
    ensure!(image.repo_tags == [expected.clone()], "tags {:?}, expected [{expected}]", image.repo_tags);
    Ok(())
}

#[test]
fn commerce_image_runs_its_binary_as_user_65532_with_the_version_labels() -> Result<()> {
    check_product_config(&Image::read(&product_archive("commerce")?)?, "commerce")
}

#[test]
fn commerce_operator_image_runs_its_binary_as_user_65532_with_the_version_labels() -> Result<()> {
    check_product_config(&Image::read(&product_archive("commerce-operator")?)?, "commerce-operator")
}

#[test]
fn commerce_image_has_ca_bundle_zoneinfo_and_the_nonroot_user_but_no_shell() -> Result<()> {
    check_product_root(&Image::read(&product_archive("commerce")?)?, "commerce")
}

#[test]
fn commerce_operator_image_has_ca_bundle_zoneinfo_and_the_nonroot_user_but_no_shell() -> Result<()> {
    check_product_root(&Image::read(&product_archive("commerce-operator")?)?, "commerce-operator")
}

#[test]
fn commerce_binary_finds_every_library_it_loads_in_its_image() -> Result<()> {
    check_binary_starts("commerce")
}

#[test]
fn commerce_operator_binary_finds_every_library_it_loads_in_its_image() -> Result<()> {
    check_binary_starts("commerce-operator")
}

#[test]
fn pause_image_runs_static_catatonit_in_pause_mode_as_user_65532() -> Result<()> {
    let image = Image::read(&pause_archive()?)?;
    let shown = image.archive.display().to_string();
    let [tag] = image.repo_tags.as_slice() else {
        bail!("{shown}: tags {:?}, expected one", image.repo_tags)
    };
    ensure!(tag.starts_with("localhost/commerce-pause:"), "{shown}: tag {tag}");
    ensure!(
        image.config.entrypoint.as_deref() == Some(&["/catatonit".to_owned(), "-P".to_owned()][..]),
        "{shown}: Entrypoint {:?}",
        image.config.entrypoint
    );
    ensure!(image.config.user.as_deref() == Some("65532:65532"), "{shown}: User {:?}", image.config.user);
    let files: Vec<&String> =
        image.root.iter().filter(|(_, entry)| !entry.kind.is_dir()).map(|(path, _)| path).collect();
    ensure!(files == ["catatonit"], "{shown}: expected /catatonit alone, found {files:?}");
    // Static: it starts in a root that holds nothing else.
    let root = image.unpack()?;
    let stdout = run_in_root_as_nonroot(&root.0, "/catatonit", &["-V"])?;
    ensure!(stdout.contains("catatonit"), "catatonit -V printed {stdout:?}");
    Ok(())
}

#[test]
fn image_list_names_every_image_with_the_archive_the_tests_read() -> Result<()> {
    let output = Command::new("bash")
        .arg(repo().join("e2e/scripts/images.sh"))
        .arg("list")
        .output()
        .context("running e2e/scripts/images.sh list")?;
    ensure!(output.status.success(), "images.sh list failed: {}", String::from_utf8_lossy(&output.stderr));
    let listed: BTreeMap<String, PathBuf> = String::from_utf8(output.stdout)?
        .lines()
        .map(|line| {
            let (reference, path) = line.split_once(' ').with_context(|| format!("line {line:?}"))?;
            Ok((reference.to_owned(), PathBuf::from(path)))
        })
        .collect::<Result<_>>()?;
    let expected = [
        (
            format!("{DEFAULT_IMAGE_REPOSITORY}:{VERSION}"),
            images_dir()?.join(format!("commerce-{VERSION}.tar")),
        ),
        (chart_operator_image()?, images_dir()?.join(format!("commerce-operator-{VERSION}.tar"))),
    ];
    for (reference, path) in expected {
        ensure!(
            listed.get(&reference) == Some(&path),
            "images.sh list: {reference} -> {:?}, expected {}",
            listed.get(&reference),
            path.display()
        );
    }
    let pause: Vec<&String> =
        listed.keys().filter(|reference| reference.starts_with("localhost/commerce-pause:")).collect();
    ensure!(listed.len() == 3 && pause.len() == 1, "images.sh list: {listed:?}");
    Ok(())
}
