/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Little-endian integers in byte buffers: the one encoding of every on-wire and
 * on-disk format of SK (frames, manifests, logs). Callers check bounds first.
 */
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace sk::le {

template<typename T>
void put(uint8_t *p, T v)
{
	static_assert(std::is_unsigned_v<T>);
	for (size_t i = 0; i < sizeof(T); i++)
		p[i] = static_cast<uint8_t>(v >> (8 * i));
}

template<typename T>
T get(const uint8_t *p)
{
	static_assert(std::is_unsigned_v<T>);
	T v = 0;
	for (size_t i = 0; i < sizeof(T); i++)
		v = static_cast<T>(v | static_cast<T>(p[i]) << (8 * i));
	return v;
}

template<typename T>
void append(std::vector<uint8_t> *out, T v)
{
	size_t at = out->size();
	out->resize(at + sizeof(T));
	put<T>(out->data() + at, v);
}

/* Bounded sequential reads: each call fails (false, nothing consumed) past the end. */
class Reader
{
public:
	explicit Reader(std::span<const uint8_t> in) : in_(in) {}
	template<typename T>
	bool read(T *v)
	{
		if (in_.size() - pos_ < sizeof(T))
			return false;
		*v = get<T>(in_.data() + pos_);
		pos_ += sizeof(T);
		return true;
	}
	bool u8(uint8_t *v) { return read(v); }
	bool u16(uint16_t *v) { return read(v); }
	bool u32(uint32_t *v) { return read(v); }
	bool u64(uint64_t *v) { return read(v); }
	bool bytes(std::string *s, size_t n)
	{
		if (in_.size() - pos_ < n)
			return false;
		s->assign(reinterpret_cast<const char *>(in_.data() + pos_), n);
		pos_ += n;
		return true;
	}
	/* n bytes in place: *out points into the input. */
	bool view(std::string_view *out, size_t n)
	{
		if (in_.size() - pos_ < n)
			return false;
		*out = { reinterpret_cast<const char *>(in_.data() + pos_), n };
		pos_ += n;
		return true;
	}
	bool done() const { return pos_ == in_.size(); }
	size_t pos() const { return pos_; }

private:
	std::span<const uint8_t> in_;
	size_t pos_ = 0;
};

} /* namespace sk::le */
