/* SPDX-License-Identifier: Apache-2.0 */
/* Configuration model: placeholder until the config model lands. */
