/* SPDX-License-Identifier: Apache-2.0 */
/*
 * capture_bench: cost of the FUSE capture layer. Same workloads on a bare temp
 * directory and through a CaptureFs mount whose sink acks at once (so only the
 * FUSE + op-building overhead is measured), alternated, medians and ratios.
 * Run as root: capture_bench [--dir /tmp] [--mb 256] [--syncs 2000] [--files 1000]
 *              [--rounds 3] [--json capture_bench.json]
 */
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <ftw.h>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include "replication/fuse/capture_fs.h"

using namespace sk::repl;

namespace {

/* Acks everything at once; keeps only counts so memory stays flat. */
class CountingSink : public OpSink
{
public:
	uint64_t submit(Op &&op) override
	{
		bytes_ += op.data.size();
		return ++seq_;
	}
	uint64_t submitBarrier(bool) override { return ++seq_; }
	int waitAcked(uint64_t) override { return 0; }
	uint64_t ops() const { return seq_.load(); }

private:
	std::atomic<uint64_t> seq_{ 0 };
	std::atomic<uint64_t> bytes_{ 0 };
};

struct Params {
	std::string base = "/tmp";
	uint64_t mb = 256;
	int syncs = 2000;
	int files = 1000;
	int rounds = 3;
	std::string json = "capture_bench.json";
};

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point t0)
{
	return std::chrono::duration<double>(Clock::now() - t0).count();
}

int rmEntry(const char *path, const struct stat *, int, struct FTW *)
{
	return remove(path);
}

void die(const char *what)
{
	perror(what);
	exit(1);
}

/* Returns MiB/s. */
double seqWrite(const std::string &dir, uint64_t mb)
{
	std::string buf(1 << 20, 'w');
	std::string path = dir + "/seq";
	auto t0 = Clock::now();
	int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open seq");
	for (uint64_t i = 0; i < mb; i++)
		if (write(fd, buf.data(), buf.size()) != static_cast<ssize_t>(buf.size()))
			die("write seq");
	if (fsync(fd) < 0)
		die("fsync seq");
	close(fd);
	double s = secondsSince(t0);
	unlink(path.c_str());
	return mb / s;
}

/* Returns 4 KiB write+fsync per second. */
double writeFsync(const std::string &dir, int n)
{
	std::string buf(4096, 's');
	std::string path = dir + "/sync";
	int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open sync");
	auto t0 = Clock::now();
	for (int i = 0; i < n; i++) {
		if (pwrite(fd, buf.data(), buf.size(), static_cast<off_t>(i) * 4096) != 4096)
			die("pwrite sync");
		if (fsync(fd) < 0)
			die("fsync");
	}
	double s = secondsSince(t0);
	close(fd);
	unlink(path.c_str());
	return n / s;
}

/* Returns files per second (create, write 4 KiB, fsync, close). */
double smallFiles(const std::string &dir, int n)
{
	std::string buf(4096, 'f');
	std::string sub = dir + "/small";
	mkdir(sub.c_str(), 0755);
	auto t0 = Clock::now();
	for (int i = 0; i < n; i++) {
		std::string path = sub + "/f" + std::to_string(i);
		int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
		if (fd < 0)
			die("create small");
		if (write(fd, buf.data(), buf.size()) != 4096)
			die("write small");
		if (fsync(fd) < 0)
			die("fsync small");
		close(fd);
	}
	double s = secondsSince(t0);
	nftw(sub.c_str(), rmEntry, 16, FTW_DEPTH | FTW_PHYS);
	return n / s;
}

double median(std::vector<double> v)
{
	std::sort(v.begin(), v.end());
	return v[v.size() / 2];
}

struct Workload {
	const char *name;
	const char *unit;
	double (*run)(const std::string &, const Params &);
	std::vector<double> bare, mounted;
};

} /* namespace */

int main(int argc, char **argv)
{
	Params p;
	for (int i = 1; i + 1 < argc; i += 2) {
		std::string k = argv[i], v = argv[i + 1];
		if (k == "--dir")
			p.base = v;
		else if (k == "--mb")
			p.mb = std::stoull(v);
		else if (k == "--syncs")
			p.syncs = std::stoi(v);
		else if (k == "--files")
			p.files = std::stoi(v);
		else if (k == "--rounds")
			p.rounds = std::stoi(v);
		else if (k == "--json")
			p.json = v;
		else {
			fprintf(stderr, "unknown option %s\n", k.c_str());
			return 2;
		}
	}
	if (geteuid() != 0) {
		fprintf(stderr, "capture_bench: needs root (FUSE mount)\n");
		return 2;
	}
	std::string tmpl = p.base + "/sk-bench-capture-XXXXXX";
	std::vector<char> buf(tmpl.begin(), tmpl.end());
	buf.push_back('\0');
	if (!mkdtemp(buf.data()))
		die("mkdtemp");
	std::string root = buf.data();
	std::string bare = root + "/bare", mnt = root + "/mnt";
	mkdir(bare.c_str(), 0755);
	mkdir(mnt.c_str(), 0755);

	std::vector<Workload> loads = {
		{ "seq_write_1MiB", "MiB/s", [](const std::string &d, const Params &q) { return seqWrite(d, q.mb); }, {}, {} },
		{ "write4k_fsync", "ops/s", [](const std::string &d, const Params &q) { return writeFsync(d, q.syncs); }, {}, {} },
		{ "small_file_create_fsync", "files/s", [](const std::string &d, const Params &q) { return smallFiles(d, q.files); }, {}, {} },
	};

	CountingSink sink;
	CaptureOptions opts;
	opts.mountpoint = mnt;
	opts.sink = &sink;
	auto fs = CaptureFs::mount(opts);
	if (!fs) {
		fprintf(stderr, "mount: %s\n", fs.error().message.c_str());
		return 1;
	}
	/* Alternate bare and mounted in every round: the machine is noisy. */
	for (int r = 0; r < p.rounds; r++) {
		for (Workload &w : loads) {
			w.bare.push_back(w.run(bare, p));
			w.mounted.push_back(w.run(mnt, p));
		}
	}
	auto counters = fs.value()->counters();
	(void)fs.value()->unmount();
	nftw(root.c_str(), rmEntry, 16, FTW_DEPTH | FTW_PHYS);

	printf("%-26s %-8s %12s %12s %8s\n", "workload", "unit", "bare", "capture", "ratio");
	FILE *js = fopen(p.json.c_str(), "w");
	if (js)
		fprintf(js, "{\n  \"bench\": \"capture\",\n  \"rounds\": %d,\n  \"ops_submitted\": %llu,\n"
			    "  \"barriers\": %llu,\n  \"results\": [\n",
			p.rounds, static_cast<unsigned long long>(sink.ops()),
			static_cast<unsigned long long>(counters.barriers));
	for (size_t i = 0; i < loads.size(); i++) {
		const Workload &w = loads[i];
		double b = median(w.bare), m = median(w.mounted);
		printf("%-26s %-8s %12.1f %12.1f %8.3f\n", w.name, w.unit, b, m, m / b);
		if (js)
			fprintf(js, "    {\"name\": \"%s\", \"unit\": \"%s\", \"bare\": %.3f, \"capture\": %.3f, \"ratio\": %.4f}%s\n",
				w.name, w.unit, b, m, m / b, i + 1 < loads.size() ? "," : "");
	}
	if (js) {
		fprintf(js, "  ]\n}\n");
		fclose(js);
		printf("JSON written to %s\n", p.json.c_str());
	}
	return 0;
}
