//! Sessions of endless: rolling latent context, frame sources and the batch scheduler.
//! Session logic knows nothing of sockets or codecs (filled in by the streaming and
//! generation issues).
