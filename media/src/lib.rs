//! Media: RTP relay, G.711 and the N-1 conference mixer (arrives with the media issue).
