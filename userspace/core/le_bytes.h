/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Little-endian integers in byte buffers: the one encoding of every on-wire and
 * on-disk format of SK (frames, manifests, logs). Callers check bounds first.
 */
#pragma once

#include <cstdint>
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

} /* namespace sk::le */
