import { type Codec } from './protocol.js';
export declare const msgpackCodec: Codec;
