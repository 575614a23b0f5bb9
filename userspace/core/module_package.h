/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Module packages (`skctl module install|list|remove|package`): a module directory or a
 * tar.gz archive is read into memory with bounds, checked the way skd would check it before
 * anything is written, then installed into modules_dir atomically (temp dir + fsync + rename).
 * Archives come from outside: the reader refuses anything that could escape the module.
 */
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/result.h"

namespace sk {

/* Bounds on what a module may hold; the defaults fit any sane module with room to spare. */
struct ModuleLimits {
	size_t maxEntries = 1000;		/* files, directories and symlinks */
	uint64_t maxFileBytes = 16u << 20;	/* one file */
	uint64_t maxTotalBytes = 64u << 20;	/* every file together (uncompressed) */
	uint64_t maxArchiveBytes = 64u << 20;	/* the archive file itself */
	size_t maxPathBytes = 255;		/* a path inside the module, and a symlink target */
	size_t maxDepth = 16;			/* directory levels */
};

enum class ModuleEntryKind { File, Directory, Symlink };

struct ModuleEntry {
	std::string path;	/* relative, normalised: "module.json", "scripts/start_prim" */
	ModuleEntryKind kind = ModuleEntryKind::File;
	uint32_t mode = 0644;	/* permission bits as found (07777) */
	int64_t mtime = 0;
	std::string data;	/* a file's bytes, or a symlink's target */
};

/*
 * A module in memory. Invariants (checkModuleShape): entries sorted by path and unique, every
 * path normalised (no "", ".", ".." component, not absolute, no control character) within the
 * limits, every parent a Directory entry, every symlink resolving to an entry of the bundle.
 */
struct ModuleBundle {
	std::string source;	/* the directory or archive it was read from */
	bool fromArchive = false;
	std::vector<ModuleEntry> entries;

	const ModuleEntry *find(std::string_view path) const;
	/* "DIR/path" or "ARCHIVE:path", for messages. */
	std::string display(std::string_view path) const;
	uint64_t totalBytes() const;
};

/* Reads a module directory (symlinks are not followed, kept as symlinks). */
Result<ModuleBundle> readModuleDir(const std::string &dir, const ModuleLimits &limits = {});

/*
 * Reads a tar or tar.gz archive. Entries may sit at the top or under one top directory
 * (what `module package` writes). Refused: more than maxEntries entries or maxTotalBytes
 * of data, long or deep paths, absolute paths, "..", devices/FIFOs/sockets, sparse files,
 * duplicates, hard links to anything but an earlier file, symlinks leaving the module.
 */
Result<ModuleBundle> readModuleArchive(const std::string &file, const ModuleLimits &limits = {});
Result<ModuleBundle> readModuleArchiveMemory(const void *data, size_t size, const std::string &source,
					     const ModuleLimits &limits = {});

/* A directory is read as one, anything else as an archive. */
Result<ModuleBundle> readModule(const std::string &dirOrArchive, const ModuleLimits &limits = {});

/* Checks the ModuleBundle invariants; readers guarantee them, installModule re-checks. */
Status checkModuleShape(const ModuleBundle &bundle, const ModuleLimits &limits = {});

struct ModuleCheck {
	ModuleConfig config;			/* meaningful when errors is empty */
	std::vector<ConfigError> errors;	/* each one refuses the module */
	std::vector<ConfigError> warnings;	/* problems of other installed modules */
};

/*
 * What skd would check, plus the files: module.json (with the cluster's cross-references
 * when cluster is given), the set checks against `installed` (other modules of this node;
 * one of the same name is taken as the one being replaced; null: not checked), and
 * scripts/: only hook scripts (kScriptNames) and the module's custom checker scripts, each
 * a regular executable file (or a symlink to one) starting with "#!" or an ELF header; no
 * file with a set-user-ID or set-group-ID bit.
 */
ModuleCheck checkModuleBundle(const ModuleBundle &bundle, const ClusterConfig *cluster,
			      const std::vector<ModuleConfig> *installed);

/* A module directory of modules_dir as skd would load it. */
struct InstalledModule {
	std::string name;			/* the directory's name */
	std::string dir;
	bool valid = false;
	ModuleConfig config;			/* when valid */
	std::vector<ConfigError> errors;
};

/* Every <modulesDir>/<name>/ (dot names skipped: temp dirs); a missing modulesDir is empty. */
Result<std::vector<InstalledModule>> listInstalledModules(const std::string &modulesDir,
							  const ClusterConfig *cluster);

/* "web (checker \"db-up\")" for every module whose module checker watches `name`. */
std::vector<std::string> modulesWatching(const std::vector<InstalledModule> &modules, const std::string &name);

struct InstallResult {
	std::string dir;	/* <modulesDir>/<name> */
	bool replaced = false;
	size_t files = 0;
	uint64_t bytes = 0;
};

/*
 * Writes the bundle into <modulesDir>/.install-<name>-XXXXXX (files mode & 0755, fsynced,
 * directories fsynced), then renames it to <modulesDir>/<name>: -EEXIST when that exists
 * and !replace; with replace the old directory is swapped out atomically and deleted.
 * Serialised with other installs/removes by a lock on modulesDir (created if missing).
 */
Result<InstallResult> installModule(const ModuleBundle &bundle, const std::string &name,
				    const std::string &modulesDir, bool replace);

/* Renames <modulesDir>/<name> to a dot name (atomic for skd), fsyncs, then deletes it. */
Status removeModule(const std::string &modulesDir, const std::string &name);

/*
 * Writes a tar.gz (pax) holding <name>/ and every entry under it, owner root, files
 * mode & 0755; through a temp file, fsync and rename, so `file` is never half written.
 */
Status writeModuleArchive(const ModuleBundle &bundle, const std::string &name, const std::string &file);

/* The bytes writeModuleArchive writes (same module, same bytes: no time stamps added). */
Result<std::string> packModuleArchive(const ModuleBundle &bundle, const std::string &name);

/* A module's state on this node, from skd's status document. */
struct ModuleRunState {
	bool known = false;	/* skd has the module in its configuration */
	bool running = false;	/* state other than STOP, or a hook script running */
	std::string state;	/* "PRIM", "STOP", ... */
	std::string label;	/* "PRIM/running", ... */
};
ModuleRunState moduleRunState(const nlohmann::json &status, const std::string &name);

} /* namespace sk */
