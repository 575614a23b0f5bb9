/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Result<T>: a value or an error (negative errno + a message a user can act on).
 * libsk never throws: functions return 0 / -errno, or a Result when they also
 * produce a value or need to explain the failure.
 */
#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <variant>

namespace sk {

struct Error {
	int code = -EINVAL;	/* negative errno */
	std::string message;
};

template<typename T>
class [[nodiscard]] Result
{
public:
	Result(T value) : v_(std::move(value)) {}
	Result(Error error) : v_(std::move(error)) {}

	bool ok() const { return v_.index() == 0; }
	explicit operator bool() const { return ok(); }

	T &value() & { return std::get<0>(v_); }
	const T &value() const & { return std::get<0>(v_); }
	T &&value() && { return std::get<0>(std::move(v_)); }
	T *operator->() { return &value(); }
	const T *operator->() const { return &value(); }
	T &operator*() { return value(); }
	const T &operator*() const { return value(); }

	const Error &error() const { return std::get<1>(v_); }
	int code() const { return ok() ? 0 : error().code; }

private:
	std::variant<T, Error> v_;
};

/* Result<void> equivalent: an empty success or an error. */
class [[nodiscard]] Status
{
public:
	Status() = default;
	Status(Error error) : error_(std::move(error)), failed_(true) {}

	static Status success() { return {}; }

	bool ok() const { return !failed_; }
	explicit operator bool() const { return ok(); }
	const Error &error() const { return error_; }
	int code() const { return failed_ ? error_.code : 0; }

private:
	Error error_;
	bool failed_ = false;
};

inline Error makeError(int code, std::string message)
{
	return Error{ code, std::move(message) };
}

/* "what: strerror(-code)" for a failed system call (code is -errno). */
std::string errnoMessage(const std::string &what, int code);

} /* namespace sk */
